"""Zero-shot semantic segmentation: per-patch class scores, sliding windows, arg-max, mIoU.

The original has no segmentation code (FLAIR_SPEC §7.8); our protocol, two per-patch scores:
* `patch`: cos(image_post(patch token), class embedding) — every method;
* `attention` (FLAIR only): the class embedding as the `visual_proj` query, head-averaged weights over the
  patches with the zero slot dropped and the rest renormalised (the original would not renormalise, §8.14).
Patch maps (B, C, g, g) are upsampled bilinearly to each window, averaged where windows overlap, resized to
the label map and arg-maxed. With `background_threshold`, class 0 "background" gets no prompt: pixels whose
best foreground score is below the threshold become 0. Labels are remapped to 0..C-1 with 255 = ignore.

Its data sources are in `flair_core/data/segmentation_sets.py`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from flair_core.data.errors import DataError
from flair_core.data.segmentation_sets import IGNORE, SegmentationSource
from flair_core.evaluation.attention import patch_attention, require_pooling, to_grid
from flair_core.evaluation.metrics import check_finite
from flair_core.evaluation.templates import CLIP_BEST, batched, class_text_embeddings

OPENAI_MEAN, OPENAI_STD = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)


# ---- metrics (pure) ----

def confusion_matrix(pred: torch.Tensor, target: torch.Tensor, num_classes: int,
                     ignore_index: int = IGNORE) -> torch.Tensor:
    """pred, target (...) integer maps -> (C, C) int64 counts, rows = true class, columns = predicted."""
    valid = target != ignore_index
    t, p = target[valid].long(), pred[valid].long()
    if t.numel() and (t.min() < 0 or t.max() >= num_classes or p.min() < 0 or p.max() >= num_classes):
        raise ValueError(f"labels outside 0..{num_classes - 1} (and not the ignore index {ignore_index})")
    return torch.bincount(t * num_classes + p, minlength=num_classes**2).view(num_classes, num_classes)


def iou_per_class(confusion: torch.Tensor) -> torch.Tensor:
    """(C, C) -> (C,) float64 intersection / union; NaN for a class neither present nor predicted."""
    c = confusion.double()
    inter = c.diagonal()
    union = c.sum(0) + c.sum(1) - inter
    return torch.where(union > 0, inter / union.clamp(min=1), torch.full_like(inter, float("nan")))


def mean_iou(iou: torch.Tensor) -> float:
    """Mean over the defined (non-NaN) classes; NaN if none is."""
    defined = iou[~iou.isnan()]
    return defined.mean().item() if defined.numel() else float("nan")


def trivial_miou(true_pixels: torch.Tensor) -> dict[str, float]:
    """Reference levels from the labels alone, true_pixels (C,) per class: `majority`, every pixel the most
    frequent class (all background on the built-in set); `chance`, each pixel a class drawn uniformly
    (expected intersection t/C and prediction N/C per class, ratio of expectations)."""
    t = true_pixels.double()
    total, classes = t.sum(), len(t)
    majority = torch.zeros_like(t)
    majority[t.argmax()] = t.max() / total
    present = (t > 0) | (torch.arange(classes) == t.argmax())  # a class neither present nor predicted: no IoU
    uniform = (t / classes) / (total / classes + t * (1 - 1 / classes))
    return {"majority": majority[present].mean().item(), "chance": uniform.mean().item()}


def pixel_accuracy(confusion: torch.Tensor) -> float:
    total = confusion.sum().item()
    return confusion.diagonal().sum().item() / total if total else float("nan")


def predict_labels(scores: torch.Tensor, background_threshold: float | None = None) -> torch.Tensor:
    """scores (C, H, W) -> labels (H, W). With a threshold the C scores are foreground classes 1..C and
    pixels whose best score is below it become background 0."""
    if background_threshold is None:
        return scores.argmax(dim=0)
    best, index = scores.max(dim=0)
    return torch.where(best < background_threshold, 0, index + 1)


# ---- per-patch scores and sliding windows ----

def class_scorer(model, classes: torch.Tensor, mode: str) -> Callable[[torch.Tensor], torch.Tensor]:
    """A function images (B, 3, S, S) -> per-patch class scores (B, C, g, g); classes (C, D) unit norm."""
    if mode == "patch":
        def score(images: torch.Tensor) -> torch.Tensor:
            tokens = F.normalize(model.image_post(model.encode_image(images)[1]).float(), dim=-1)  # (B, L, D)
            return to_grid((tokens @ classes.T).transpose(1, 2))

        return score
    if mode == "attention":
        pooling = require_pooling(model)

        def score(images: torch.Tensor) -> torch.Tensor:
            tokens = model.image_post(model.encode_image(images)[1])  # (B, L, D)
            return to_grid(patch_attention(pooling, classes.to(tokens.dtype), tokens)[0].float())

        return score
    raise ValueError(f"unknown segmentation mode {mode!r} (known: patch, attention)")


def window_starts(size: int, window: int, stride: int) -> list[int]:
    """Offsets every `stride` plus one window flush with the far edge, so the windows cover [0, size)."""
    if size <= window:
        return [0]
    return [*range(0, size - window, stride), size - window]


def sliding_window_scores(score_fn: Callable, images: Sequence[torch.Tensor], window: int, stride: int,
                          batch_size: int = 16, device: str | torch.device = "cpu") -> list[torch.Tensor]:
    """Images (3, H, W) -> class scores (C, H, W) each, from window-sized crops batched across images.

    Images smaller than the window are padded with zeros (the mean colour after normalisation).
    """
    padded = [F.pad(x, (0, max(0, window - x.shape[2]), 0, max(0, window - x.shape[1]))) for x in images]
    crops = [(i, y, x) for i, im in enumerate(padded) for y in window_starts(im.shape[1], window, stride)
             for x in window_starts(im.shape[2], window, stride)]
    sums: list[torch.Tensor | None] = [None] * len(images)
    counts = [torch.zeros(im.shape[1:]) for im in padded]
    for batch in batched(crops, batch_size):
        x = torch.stack([padded[i][:, y : y + window, x : x + window] for i, y, x in batch]).to(device)
        maps = F.interpolate(score_fn(x).float(), size=(window, window), mode="bilinear", align_corners=False)
        for m, (i, y, x0) in zip(maps.cpu(), batch):
            if sums[i] is None:
                sums[i] = torch.zeros(m.shape[0], *padded[i].shape[1:])
            sums[i][:, y : y + window, x0 : x0 + window] += m
            counts[i][y : y + window, x0 : x0 + window] += 1
    return [(s / c)[:, : im.shape[1], : im.shape[2]] for s, c, im in zip(sums, counts, images)]


def normalisation(transform: Callable) -> tuple[torch.Tensor, torch.Tensor]:
    """The mean/std of the transform's Normalize step (OpenAI's if it has none), each (3, 1, 1)."""
    norm = next((t for t in getattr(transform, "transforms", []) if hasattr(t, "mean") and hasattr(t, "std")),
                None)
    mean, std = (norm.mean, norm.std) if norm is not None else (OPENAI_MEAN, OPENAI_STD)
    return torch.tensor(mean).view(3, 1, 1), torch.tensor(std).view(3, 1, 1)


def to_input(image: Image.Image, mean: torch.Tensor, std: torch.Tensor,
             short_side: int | None) -> torch.Tensor:
    """PIL image -> normalised (3, H, W), optionally resized (bicubic) to a given shorter side; never
    cropped."""
    if short_side is not None:
        scale = short_side / min(image.size)
        image = image.resize((round(image.width * scale), round(image.height * scale)), Image.BICUBIC)
    x = torch.from_numpy(np.asarray(image.convert("RGB"), dtype=np.float32) / 255).permute(2, 0, 1)
    return (x - mean) / std


@torch.no_grad()
def evaluate_segmentation(model, tokenizer: Callable, transform: Callable, source: SegmentationSource,
                          mode: str = "patch", templates: str | Sequence[str] = CLIP_BEST,
                          background_threshold: float | None = None, stride: int | None = None,
                          batch_size: int = 16, device: str | torch.device = "cpu",
                          short_side: int | None = None) -> dict:
    """mIoU over the source at its native resolution (or resized to `short_side`), windows of the model's
    image size every `stride` pixels (default half a window). Only the transform's normalisation is used.

    `iou` holds the classes that are present or predicted (others have no IoU); `miou_chance` and
    `miou_majority` are trivial predictors' (`trivial_miou`); `intersection` and `union` (I, C) are the pixel
    counts of each image. The model must be on `device`.
    """
    names = source.class_names
    if background_threshold is not None and names[0] != "background":
        raise ValueError(f"background_threshold needs 'background' as class 0 of {source.name}")
    model.eval()
    prompted = names[1:] if background_threshold is not None else names
    scorer = class_scorer(model, class_text_embeddings(model, tokenizer, prompted, templates, device=device),
                          mode)
    window = model.config.vision_cfg.image_size
    stride = stride or max(1, window // 2)
    mean, std = normalisation(transform)
    confusion = torch.zeros(len(names), len(names), dtype=torch.long)
    intersections, unions = [], []  # (C,) per image: image-level resampling needs its counts
    for chunk in batched(source.samples(), batch_size):
        inputs = [to_input(image, mean, std, short_side) for image, _ in chunk]
        for scores, (_, label) in zip(
                sliding_window_scores(scorer, inputs, window, stride, batch_size, device), chunk):
            check_finite(source.name, mode, scores)  # NaN wins every arg-max: it would score, not fail
            target = torch.from_numpy(label)
            if scores.shape[1:] != target.shape:
                scores = F.interpolate(scores[None], size=target.shape, mode="bilinear",
                                       align_corners=False)[0]
            image = confusion_matrix(predict_labels(scores, background_threshold), target, len(names))
            confusion += image
            intersections.append(image.diagonal())
            unions.append(image.sum(0) + image.sum(1) - image.diagonal())
    if not intersections:
        raise DataError(f"{source.name}: no images")
    iou = iou_per_class(confusion)
    references = trivial_miou(confusion.sum(1))
    return {"miou": mean_iou(iou), "iou": {n: v.item() for n, v in zip(names, iou) if not math.isnan(v)},
            "pixel_accuracy": pixel_accuracy(confusion), "num_images": len(intersections),
            "miou_chance": references["chance"], "miou_majority": references["majority"],
            # per image and class, for intervals and paired comparisons (both sum over images to the totals)
            "intersection": torch.stack(intersections).numpy(), "union": torch.stack(unions).numpy()}
