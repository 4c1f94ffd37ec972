"""Image–text score matrices for retrieval: global, FLAIR (all pairs) and top-k re-scoring.

Scores are s·cos without bias, as the original evaluates. The FLAIR mode projects every text query once and
every image's keys/values once, then pools image batches against text chunks; it never builds per-pair copies
of the text projections.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from flair_core.pooling import TextConditionedPooling


def global_scores(image_features: torch.Tensor, text_features: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """(B, D), (N, D) -> s·cos (B, N)."""
    return scale * F.normalize(image_features, dim=-1) @ F.normalize(text_features, dim=-1).T


@torch.no_grad()
def flair_scores(
    pooling: TextConditionedPooling,
    image_tokens: torch.Tensor,
    text_features: torch.Tensor,
    scale: torch.Tensor,
    image_batch: int = 16,
    text_chunk: int = 1024,
) -> torch.Tensor:
    """Every text pooled over every image: image_tokens (B, L, D), text_features (N, D) -> s·cos (B, N)."""
    queries = pooling.project_queries(text_features)  # (H, N, hd), once for all images
    targets = F.normalize(text_features, dim=-1)
    scores = torch.empty(image_tokens.shape[0], text_features.shape[0], dtype=text_features.dtype)
    for i in range(0, image_tokens.shape[0], image_batch):
        keys, values = pooling.project_keys_values(image_tokens[i : i + image_batch])  # (b, H, L+1, hd)
        b = keys.shape[0]
        for j in range(0, text_features.shape[0], text_chunk):
            q = queries[:, j : j + text_chunk].expand(b, -1, -1, -1)  # (b, H, n, hd)
            pooled = F.normalize(pooling.attend(q, keys, values)[0], dim=-1)  # (b, n, D)
            scores[i : i + b, j : j + text_chunk] = (pooled * targets[j : j + text_chunk]).sum(-1).float().cpu()
    return scale.float().cpu() * scores


@torch.no_grad()
def topk_flair_scores(
    pooling: TextConditionedPooling,
    image_features: torch.Tensor,
    image_tokens: torch.Tensor,
    text_features: torch.Tensor,
    scale: torch.Tensor,
    k: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per image its k best texts by global cosine (descending), re-scored the FLAIR way: both (B, k)."""
    if k > text_features.shape[0]:
        raise ValueError(f"top-k {k} is larger than the {text_features.shape[0]} texts")
    indices = global_scores(image_features, text_features, scale).topk(k, dim=1).indices  # (B, k)
    selected = text_features[indices]  # (B, k, D)
    pooled, _ = pooling(selected, image_tokens)  # row b: image b's own k queries
    cos = (F.normalize(pooled, dim=-1) * F.normalize(selected, dim=-1)).sum(-1)
    return indices, scale * cos
