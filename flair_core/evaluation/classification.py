"""Zero-shot classification: image global embedding vs prompt-ensembled class embeddings.

Its data sources are in `flair_core/data/classification_sets.py`.

Top-k accuracy is a pure function of (scores, labels), separate from embedding.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

from flair_core.data.classification_sets import ClassificationSource
from flair_core.data.errors import DataError
from flair_core.evaluation.metrics import check_finite
from flair_core.evaluation.templates import CLIP_BEST, batched, class_text_embeddings


def topk_accuracy(scores: torch.Tensor, labels: torch.Tensor, ks: Sequence[int] = (1, 5)) -> dict[int, float]:
    """scores (N, C), labels (N,) -> {k: fraction of rows whose label is among the k best classes}.

    k is capped at C (top-5 over 3 classes is 1.0); ties fall to torch.topk's order.
    """
    if scores.ndim != 2 or labels.shape != scores.shape[:1] or scores.shape[0] == 0:
        raise ValueError(f"expected scores (N, C) and labels (N,), N > 0; got {tuple(scores.shape)}, "
                         f"{tuple(labels.shape)}")
    best = scores.topk(min(max(ks), scores.shape[1]), dim=1).indices  # (N, k_max), best first
    hit = best == labels[:, None]
    return {k: hit[:, : min(k, scores.shape[1])].any(dim=1).float().mean().item() for k in ks}


@torch.no_grad()
def image_embeddings(model, images: torch.Tensor) -> torch.Tensor:
    """images (B, 3, H, W) -> normalised global embeddings (B, D), fp32."""
    return F.normalize(model.image_post(model.encode_image(images)[0]).float(), dim=-1)


@torch.no_grad()
def evaluate_classification(model, tokenizer: Callable, transform: Callable, source: ClassificationSource,
                            templates: str | Sequence[str] = CLIP_BEST, batch_size: int = 64,
                            device: str | torch.device = "cpu") -> dict:
    """Top-1/top-5 accuracy of cosine(image, class) arg-max, their reference levels, and each image's top-1
    hit and label. The model must already be on `device`."""
    model.eval()
    classes = class_text_embeddings(model, tokenizer, source.class_names, templates, device=device)  # (C, D)
    scores, labels = [], []
    for batch in batched(source.samples(), batch_size):
        images = torch.stack([transform(image) for image, _ in batch]).to(device)
        scores.append((image_embeddings(model, images) @ classes.T).cpu())  # (B, C)
        labels.extend(label for _, label in batch)
    if not labels:
        raise DataError(f"{source.name}: no images")
    scores = torch.cat(scores)
    check_finite(source.name, "zeroshot", scores)  # NaN wins every arg-max: it would score, not fail
    labels = torch.tensor(labels)
    accuracy = topk_accuracy(scores, labels, (1, 5))
    classes = len(source.class_names)
    return {"top1": accuracy[1], "top5": accuracy[5], "num_images": len(labels), "num_classes": classes,
            # reference levels: a uniformly random guess, and always naming the most frequent class
            "top1_chance": 1 / classes, "top5_chance": min(5, classes) / classes,
            "top1_majority": labels.bincount().max().item() / len(labels),
            "correct": (scores.topk(1, dim=1).indices[:, 0] == labels).numpy(), "labels": labels.numpy()}
