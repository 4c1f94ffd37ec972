"""Retrieval metrics as pure, vectorised functions over a score matrix and a ground-truth relation.

Ground truth is a boolean matrix: `positives[q, g]` is True when gallery item g answers query q. A query may
have several positives (an image with several captions; a caption several images satisfy); its rank is the
0-based position of its best-scoring positive: the number of gallery items scoring higher, plus wrong items
scoring the same (ties are resolved against the query).
Recalls are in percent, ranks 1-based (mean rank = mean(rank) + 1, median rank = floor(median) + 1, as the
original reports them).

Every recall comes with its chance level (what a uniformly random ranking scores, exact from the ground-truth
sets) and a seeded bootstrap interval over clusters of queries (`stats.py`), so a difference can be told from
noise.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from flair_core.evaluation import CHANCE, CI_HIGH, CI_LOW, stats

RECALL_AT = (1, 5, 10)


def non_finite(scores: torch.Tensor) -> int:
    """How many entries are NaN or ±inf."""
    # exact fast path: any NaN/inf entry makes the sum non-finite; ~100x cheaper
    if torch.isfinite(scores.sum()):
        return 0
    return int((~torch.isfinite(scores)).sum())


class EvaluationError(ValueError):
    """Scores that cannot be ranked (NaN/inf): an error naming benchmark, mode and count, never a metric."""


def check_finite(benchmark: str, mode: str, *scores: torch.Tensor) -> None:
    bad = sum(non_finite(s) for s in scores)
    if bad:
        total = sum(s.numel() for s in scores)
        raise EvaluationError(f"{benchmark}, {mode} mode: {bad} of {total} scores are not finite (NaN/inf); "
                              "no metric reported (are the model's weights finite?)")


def non_finite_metrics(metrics: dict) -> list[str]:
    """Names of the numeric metrics that are NaN or ±inf, in order."""
    return [k for k, v in metrics.items() if isinstance(v, int | float) and not math.isfinite(v)]


def ranks(scores: torch.Tensor, positives: torch.Tensor) -> torch.Tensor:
    """scores (Q, G), positives bool (Q, G), each row with at least one positive -> 0-based ranks (Q,)."""
    if not positives.any(dim=1).all():
        raise ValueError("every query needs at least one positive")
    bad = non_finite(scores)
    if bad:  # NaN compares false with everything: every query would rank 0, R@1 = 100
        raise ValueError(f"{bad} of {scores.numel()} scores are not finite")
    best = scores.masked_fill(~positives, float("-inf")).amax(dim=1, keepdim=True)  # (Q, 1)
    # Ties with wrong items count against the query: a collapsed model scoring
    # everything alike gets no credit.
    return (scores > best).sum(dim=1) + ((scores == best) & ~positives).sum(dim=1)


def rank_metrics(rank: torch.Tensor, prefix: str) -> dict[str, float]:
    r = rank.double()
    out = {f"{prefix}_r{k}": 100.0 * (r < k).double().mean().item() for k in RECALL_AT}
    out[f"{prefix}_mean_rank"] = r.mean().item() + 1
    out[f"{prefix}_median_rank"] = float(torch.floor(torch.quantile(r, 0.5)).item() + 1)  # numpy's median
    return out


def chance_recall(num_positives: torch.Tensor, gallery: int, k: int) -> float:
    """R@k (percent) of a uniformly random ranking: mean over queries of 1 - C(G-n, k) / C(G, k).

    num_positives (Q,): each query's n positives among the G gallery items.
    """
    n = num_positives.double()
    miss = torch.ones_like(n)  # P(no positive in the top k) = prod_{i<k} (G-n-i) / (G-i)
    for i in range(min(k, gallery)):
        miss *= ((gallery - n - i) / (gallery - i)).clamp(min=0)  # 0 once the top k cannot avoid a positive
    return 100.0 * (1 - miss).mean().item()


def chance_mean_rank(num_positives: torch.Tensor, gallery: int) -> float:
    """1-based mean rank of the best positive under a random ranking: E[min of n of G positions] =
    (G+1)/(n+1)."""
    return ((gallery + 1) / (num_positives.double() + 1)).mean().item()


def recall_intervals(rank: torch.Tensor, clusters: torch.Tensor, ks: tuple[int, ...] = RECALL_AT
                     ) -> dict[int, tuple[float, float]]:
    """95 % interval of R@k (percent) by cluster bootstrap: rank (Q,), clusters (Q,) -> {k: (low, high)}.

    Queries of one cluster are drawn together (`stats.py`): a built-in image's 5–7 queries and its twin's are
    not independent evidence. Seeded, so a re-evaluation of the same scores reports the same interval.
    """
    rank, clusters = rank.numpy(), clusters.numpy()
    found = stats.estimate_together([stats.recall_outcomes(rank, clusters, k) for k in ks])
    return {k: (e.low, e.high) for k, e in zip(ks, found, strict=True)}


@dataclass(frozen=True)
class RankedQueries:
    """One direction's per-query results, kept beside the metrics (`records.py`): which query (its text or
    image index), its resampling cluster, the 0-based rank of its best positive."""

    query: torch.Tensor
    cluster: torch.Tensor
    rank: torch.Tensor


def direction_metrics(scores: torch.Tensor, positives: torch.Tensor, prefix: str, clusters: torch.Tensor
                      ) -> tuple[dict[str, float], torch.Tensor]:
    """One direction: scores (Q, G), positives bool (Q, G), clusters (Q,) -> recalls and ranks, each recall
    with its interval (`_ci_low`, `_ci_high`) and chance level (`_chance`), and the chance mean rank; and the
    ranks."""
    rank = ranks(scores, positives)
    n, gallery = positives.sum(dim=1), positives.shape[1]
    out = rank_metrics(rank, prefix)
    for k, (low, high) in recall_intervals(rank, clusters).items():
        name = f"{prefix}_r{k}"
        out |= {name + CI_LOW: low, name + CI_HIGH: high, name + CHANCE: chance_recall(n, gallery, k)}
    out[f"{prefix}_mean_rank{CHANCE}"] = chance_mean_rank(n, gallery)
    return out, rank


def retrieval_metrics(i2t: torch.Tensor, t2i: torch.Tensor, relevant: torch.Tensor,
                      image_cluster: torch.Tensor | None = None, text_cluster: torch.Tensor | None = None
                      ) -> tuple[dict[str, float], dict[str, RankedQueries]]:
    """i2t, t2i: (I, T) scores used to rank texts per image and images per text; relevant: bool (I, T);
    clusters (default: every image and text its own) -> metrics and each direction's ranked queries.

    A query with no relevant item (an image no text belongs to under the strict variant) is left out of its
    direction's metrics.
    """
    image_cluster = torch.arange(relevant.shape[0]) if image_cluster is None else image_cluster
    text_cluster = torch.arange(relevant.shape[1]) if text_cluster is None else text_cluster
    metrics, ranked = {}, {}
    for direction, scores, positives, cluster in (("t2i", t2i.T, relevant.T, text_cluster),
                                                  ("i2t", i2t, relevant, image_cluster)):
        kept = positives.any(dim=1)
        found, rank = direction_metrics(scores[kept], positives[kept], direction, cluster[kept])
        metrics |= found
        ranked[direction] = RankedQueries(kept.nonzero().squeeze(1), cluster[kept], rank)
    return metrics, ranked
