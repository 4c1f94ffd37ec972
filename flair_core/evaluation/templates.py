"""Prompt templates and class text embeddings for zero-shot classification and segmentation.

A class embedding is the mean over templates of the normalised `text_post(encode_text_global(prompt))`,
renormalised (CLIP's prompt ensembling). Ensembles are plain tuples of format strings with one `{}`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import TypeVar

import torch
import torch.nn.functional as F

# The 7 templates the CLIP ImageNet notebook found best for ensembling, plus the single default prompt.
CLIP_BEST = (
    "itap of a {}.",
    "a bad photo of the {}.",
    "a origami {}.",
    "a photo of the large {}.",
    "a {} in a video game.",
    "art of the {}.",
    "a photo of the small {}.",
    "a photo of a {}.",
)

# A broader subset of CLIP's 80 ImageNet templates (photo-like ones), used by training-free
# segmentation works.
CLIP_IMAGENET = (
    "a bad photo of a {}.",
    "a photo of many {}.",
    "a photo of the hard to see {}.",
    "a low resolution photo of the {}.",
    "a bad photo of the {}.",
    "a cropped photo of the {}.",
    "a photo of a hard to see {}.",
    "a bright photo of a {}.",
    "a photo of a clean {}.",
    "a photo of a dirty {}.",
    "a dark photo of the {}.",
    "a drawing of a {}.",
    "a photo of my {}.",
    "a close-up photo of a {}.",
    "a black and white photo of the {}.",
    "a pixelated photo of the {}.",
    "a jpeg corrupted photo of a {}.",
    "a blurry photo of the {}.",
    "a photo of the {}.",
    "a good photo of the {}.",
    "a rendering of a {}.",
    "a {} in a video game.",
    "a photo of one {}.",
    "a close-up photo of the {}.",
    "a photo of a {}.",
    "the {} in a scene.",
    "a photo of a large {}.",
    "a photo of a nice {}.",
    "a photo of a weird {}.",
    "a cartoon {}.",
    "art of a {}.",
    "a photo of a small {}.",
)

# FILIP (Yao et al., 2022, §3.1.2) appends "I like it." to its prompts: with token-wise late interaction
# every text token votes, and the neutral suffix was found to help.
FILIP = tuple(f"{t} I like it." for t in CLIP_BEST)

# Built-in scenes: objects are described as "a red circle", so a bare noun phrase is in-distribution.
SCENE = ("a {}.", "a {} shape.", "a photo of a {}.")

TEMPLATES: dict[str, tuple[str, ...]] = {
    "clip_best": CLIP_BEST,
    "clip_imagenet": CLIP_IMAGENET,
    "filip": FILIP,
    "scene": SCENE,
    "single": ("a photo of a {}.",),
}

T = TypeVar("T")


def resolve_templates(templates: str | Sequence[str]) -> tuple[str, ...]:
    """A named ensemble (see TEMPLATES) or an explicit sequence of format strings, each holding one `{}`."""
    if isinstance(templates, str):
        if templates not in TEMPLATES:
            raise ValueError(f"unknown template set {templates!r} (known: {', '.join(sorted(TEMPLATES))})")
        return TEMPLATES[templates]
    templates = tuple(templates)
    bad = [t for t in templates if t.count("{}") != 1]
    if not templates or bad:
        raise ValueError(f"templates must be a non-empty list of strings with one '{{}}' (bad: {bad[:1]})")
    return templates


def batched(items: Iterable[T], size: int) -> Iterator[list[T]]:
    """Consecutive lists of `size` items (the last may be shorter)."""
    batch: list[T] = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


@torch.no_grad()
def class_text_embeddings(model, tokenizer: Callable, class_names: Sequence[str],
                          templates: str | Sequence[str] = CLIP_BEST, batch_size: int = 256,
                          device: str | torch.device = "cpu") -> torch.Tensor:
    """Prompt-ensembled class embeddings (num_classes, D), unit norm, fp32 on `device`."""
    templates = resolve_templates(templates)
    if not class_names:
        raise ValueError("no class names to embed")
    prompts = [t.format(name) for name in class_names for t in templates]  # class-major: (C·T,)
    parts = []
    for chunk in batched(prompts, batch_size):
        ids = tokenizer(chunk).to(device)
        parts.append(F.normalize(model.text_post(model.encode_text_global(ids)).float(), dim=-1))
    per_prompt = torch.cat(parts).view(len(class_names), len(templates), -1)  # (C, T, D)
    return F.normalize(per_prompt.mean(dim=1), dim=-1)
