"""Scoring images against texts with a trained model, in its method's own scoring mode: the small API that
the dashboard, the MLflow pyfunc model and notebooks use.

    model = load_trained("runs/flair")                     # a run folder, checkpoint or weights file
    score_pairs(model, images, ["a red circle", ...])       # (N,) one score per (image, text) pair
    order, scores = rank_images(model, ["a red circle"], images)   # (T, I) best image first

Scores are s·cos (no bias), as retrieval ranks them. Images are PIL images; a gallery scored against many
queries can be embedded once with `embed_images` and passed instead of the images.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from itertools import islice

import torch
from PIL import Image

from flair_core.methods import method_of
from flair_core.models import load_trained
from flair_core.preprocess import get_tokenizer, get_transform

Embeddings = Mapping[str, torch.Tensor]


def _device(model) -> torch.device:
    return next(model.parameters()).device


@torch.no_grad()
def embed_images(model, images: Iterable[Image.Image], batch_size: int = 64, transform=None) -> dict:
    """Every image as the model's method scores it (global features, tokens, ...), on the CPU."""
    model.eval()
    transform = transform or get_transform(model.config, train=False)
    parts: dict[str, list[torch.Tensor]] = {}
    images = iter(images)
    while batch := list(islice(images, batch_size)):
        x = torch.stack([transform(image.convert("RGB")) for image in batch]).to(_device(model))
        _append(parts, model.embed_images(x))
    return _concat(parts)


@torch.no_grad()
def embed_texts(model, texts: Sequence[str], batch_size: int = 64, tokenizer=None) -> dict:
    """Every text as the model's method scores it, on the CPU."""
    model.eval()
    tokenizer = tokenizer or get_tokenizer(model.config)
    parts: dict[str, list[torch.Tensor]] = {}
    for start in range(0, len(texts), batch_size):
        _append(parts,
                model.embed_texts(tokenizer(list(texts[start : start + batch_size])).to(_device(model))))
    return _concat(parts)


@torch.no_grad()
def score_matrix(model, images: Embeddings, texts: Embeddings, mode: str | None = None, **options
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """(i2t, t2i) score matrices (I, T) of embedded images and texts, in `mode` (default: the method's
    own)."""
    features = {**images, **texts, "logit_scale": model.logit_scale.exp().detach().float().cpu()}
    return model.retrieval_scores(features, mode or method_of(model).primary_mode, **options)


def score_pairs(model, images: Sequence[Image.Image], texts: Sequence[str]) -> torch.Tensor:
    """One score per (images[n], texts[n]) pair: (N,)."""
    if len(images) != len(texts):
        raise ValueError(f"score_pairs needs as many images as texts (got {len(images)} and {len(texts)})")
    # The method's scoring works on whole matrices; pairs are its diagonal (N² work, fine for request sizes).
    _, t2i = score_matrix(model, embed_images(model, images), embed_texts(model, texts))
    return t2i.diagonal().clone()


def rank_images(model, texts: Sequence[str], images: Sequence[Image.Image] | Embeddings
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """For each text, the images best first: (order (T, I) of image indices, scores (T, I))."""
    gallery = images if isinstance(images, Mapping) else embed_images(model, images)
    _, t2i = score_matrix(model, gallery, embed_texts(model, texts))
    scores = t2i.T.contiguous()  # (T, I)
    return scores.argsort(dim=1, descending=True, stable=True), scores


def _append(parts: dict[str, list[torch.Tensor]], embedded: dict[str, torch.Tensor]) -> None:
    for key, value in embedded.items():
        parts.setdefault(key, []).append(value.float().cpu() if value.is_floating_point() else value.cpu())


def _concat(parts: dict[str, list[torch.Tensor]]) -> dict:
    return {key: torch.cat(values) for key, values in parts.items()}


__all__ = ["embed_images", "embed_texts", "load_trained", "rank_images", "score_matrix", "score_pairs"]
