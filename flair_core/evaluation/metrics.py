"""Retrieval metrics as pure, vectorised functions over a score matrix and a ground-truth relation.

Ground truth is a boolean matrix: `positives[q, g]` is True when gallery item g answers query q. A query may
have several positives (an image with several captions; a caption several images satisfy); its rank is the
0-based position of its best-scoring positive: the number of gallery items scoring higher, plus wrong items
scoring the same (ties are resolved against the query).
Recalls are in percent, ranks 1-based (mean rank = mean(rank) + 1, median rank = floor(median) + 1, as the
original reports them).
"""

from __future__ import annotations

import torch

RECALL_AT = (1, 5, 10)


def ranks(scores: torch.Tensor, positives: torch.Tensor) -> torch.Tensor:
    """scores (Q, G), positives bool (Q, G), each row with at least one positive -> 0-based ranks (Q,)."""
    if not positives.any(dim=1).all():
        raise ValueError("every query needs at least one positive")
    best = scores.masked_fill(~positives, float("-inf")).amax(dim=1, keepdim=True)  # (Q, 1)
    # Ties with wrong items count against the query: a collapsed model scoring everything alike gets no credit.
    return (scores > best).sum(dim=1) + ((scores == best) & ~positives).sum(dim=1)


def rank_metrics(rank: torch.Tensor, prefix: str) -> dict[str, float]:
    r = rank.double()
    out = {f"{prefix}_r{k}": 100.0 * (r < k).double().mean().item() for k in RECALL_AT}
    out[f"{prefix}_mean_rank"] = r.mean().item() + 1
    out[f"{prefix}_median_rank"] = float(torch.floor(torch.quantile(r, 0.5)).item() + 1)  # numpy's median
    return out


def retrieval_metrics(i2t: torch.Tensor, t2i: torch.Tensor, relevant: torch.Tensor) -> dict[str, float]:
    """i2t, t2i: (I, T) scores used to rank texts per image and images per text; relevant: bool (I, T).

    A query with no relevant item (an image no text belongs to under the strict variant) is left out of its
    direction's metrics.
    """
    texts, images = relevant.any(dim=0), relevant.any(dim=1)
    return {
        **rank_metrics(ranks(t2i.T[texts], relevant.T[texts]), "t2i"),
        **rank_metrics(ranks(i2t[images], relevant[images]), "i2t"),
    }


def relevance_matrix(num_images: int, text_positives: list[list[int]] | list[tuple[int, ...]]) -> torch.Tensor:
    """bool (I, T): text t is relevant to every image in text_positives[t]."""
    relevant = torch.zeros(num_images, len(text_positives), dtype=torch.bool)
    for t, images in enumerate(text_positives):
        relevant[list(images), t] = True
    return relevant
