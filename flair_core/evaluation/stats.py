"""Intervals and comparisons from per-unit outcomes: cluster bootstrap, seeds as the unit, paired differences,
Holm's correction.

Every headline metric is a function of sums over its units: R@k = 100 · Σ hit / Σ 1 over queries, top-1 the
same over images, mIoU = 100 · mean over classes of Σ intersection / Σ union over images. Units are not
independent: a built-in image has 5–7 queries and comes with its one-attribute-changed twin, so a resample
draws whole clusters (every query of a twin pair; for the real benchmarks every query of an image). Across
seeds the seed is the unit of a claim: a two-level bootstrap draws seeds, then clusters within each drawn
seed's evaluation.

Two methods scored on the same queries and seeds are compared by their paired difference: both get the same
draws, so what they share (an easy query, a lucky test set) cancels. The p-value is the bootstrap's (twice the
smaller share of resampled differences on either side of 0; 0 means below 1 / resamples), so a difference's
1 − α interval excludes 0 when p < α (both are read off the same resamples); `holm` adjusts a report's
p-values for its number of claims.

With few seeds the seed level is coarse: S seeds give the bootstrap S^S draws at most and a seed variance
(S − 1)/S of the true one, so where seed-to-seed variance dominates, 2–3 seeds give too narrow an interval.
Where each seed's test-set noise dominates (the built-in sets' case) coverage holds: tests/test_stats.py
measures 0.95 with 3 seeds and 0.96 with 8.
Numpy only: the dashboard and the promotion gate use this without torch.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

RESAMPLES, SEED, LEVEL = 2000, 0, 0.95

Statistic = Callable[[np.ndarray], np.ndarray]  # column sums (..., d) -> metric (...)


def _recall(sums: np.ndarray) -> np.ndarray:
    return 100.0 * sums[..., 0] / sums[..., 1]


@dataclass(frozen=True)
class Outcomes:
    """One metric's outcomes on one evaluation: per unit (query or image) a row of `values` (U, d) whose
    column sums give the metric through `statistic`; `clusters` (U,) says which units are drawn together,
    `ids` (U,) which query or image each is (two evaluations are paired only on the same ids)."""

    values: np.ndarray
    clusters: np.ndarray
    statistic: Statistic = _recall
    ids: np.ndarray | None = None
    _sums: np.ndarray = field(init=False, repr=False, compare=False)

    def __post_init__(self):
        values = np.asarray(self.values, dtype=np.float64)
        values = values[:, None] if values.ndim == 1 else values
        if len(values) != len(self.clusters) or (self.ids is not None and len(self.ids) != len(values)):
            raise ValueError(f"{len(values)} units but {len(self.clusters)} cluster ids")
        if not len(values):
            raise ValueError("no units to resample")
        _, cluster_index = np.unique(np.asarray(self.clusters), return_inverse=True)
        sums = np.zeros((cluster_index.max() + 1, values.shape[1]))
        np.add.at(sums, cluster_index, values)
        object.__setattr__(self, "_sums", sums)

    @property
    def num_clusters(self) -> int:
        return len(self._sums)

    def value(self) -> float:
        return float(self.statistic(self._sums.sum(axis=0)))

    def resampled(self, weights: np.ndarray) -> np.ndarray:
        """(..., C) draw counts per cluster -> the metric of each resample (...)."""
        return self.statistic(weights @ self._sums)


def recall_outcomes(rank: np.ndarray, clusters: np.ndarray, k: int,
                    ids: np.ndarray | None = None) -> Outcomes:
    """R@k in percent from 0-based ranks of the best positive."""
    rank = np.asarray(rank)
    return Outcomes(np.stack([rank < k, np.ones(len(rank))], axis=1), clusters, _recall, ids)


def accuracy_outcomes(correct: np.ndarray, clusters: np.ndarray, ids: np.ndarray | None = None) -> Outcomes:
    """Accuracy in percent (e.g. zero-shot top-1) from per-image hits."""
    correct = np.asarray(correct)
    return Outcomes(np.stack([correct, np.ones(len(correct))], axis=1), clusters, _recall, ids)


def minimal_pair_outcomes(margin: np.ndarray, clusters: np.ndarray,
                          ids: np.ndarray | None = None) -> Outcomes:
    """Minimal-pair accuracy in percent from score(true image) − score(its twin) per query: a win counts 1, a
    tie ½ (a model that cannot tell the two apart is at chance, 50 %), a loss 0."""
    return accuracy_outcomes((np.sign(np.asarray(margin, dtype=np.float64)) + 1) / 2, clusters, ids)


def miou_outcomes(intersection: np.ndarray, union: np.ndarray, clusters: np.ndarray,
                  ids: np.ndarray | None = None) -> Outcomes:
    """mIoU in percent from per-image, per-class pixel counts (I, C): the mean over classes with a union."""
    classes = intersection.shape[1]

    def miou(sums: np.ndarray) -> np.ndarray:
        inter, union_ = sums[..., :classes], sums[..., classes:]
        iou = np.divide(inter, union_, out=np.full(inter.shape, np.nan), where=union_ > 0)
        # a resample with no defined class: NaN, dropped by the percentile
        with np.errstate(invalid="ignore"):
            return 100.0 * np.nanmean(iou, axis=-1) if iou.shape[-1] else np.full(iou.shape[:-1], np.nan)

    return Outcomes(np.concatenate([intersection, union], axis=1), clusters, miou, ids)


@dataclass(frozen=True)
class Estimate:
    """A metric over seeds: the seed mean, each seed's value and the interval of the mean."""

    value: float
    low: float
    high: float
    per_seed: tuple[float, ...]

    @property
    def seeds(self) -> int:
        return len(self.per_seed)


@dataclass(frozen=True)
class Difference:
    """A − B, paired: the seed means, the mean difference with its interval and p-value, and the ratio A / B
    with its interval (inf where B's resample is 0)."""

    a: Estimate
    b: Estimate
    value: float
    low: float
    high: float
    p: float
    ratio: float
    ratio_low: float
    ratio_high: float
    resampled: np.ndarray = field(repr=False, compare=False, default_factory=lambda: np.zeros(0))

    @property
    def seeds(self) -> int:
        return self.a.seeds

    def p_at(self, threshold: float) -> float:
        """Two-sided bootstrap p-value of "A − B = threshold" (`p` is `p_at(0)`)."""
        return _two_sided(self.resampled, threshold)


def _draws(rng: np.random.Generator, clusters: int, shape: tuple[int, ...]) -> np.ndarray:
    """Draw counts per cluster (*shape, clusters): each resample draws `clusters` clusters with
    replacement."""
    return rng.multinomial(clusters, np.full(clusters, 1.0 / clusters), size=shape).astype(np.float64)


def _seed_resamples(per_seed: Sequence[Sequence[Outcomes]], resamples: int, seed: int) -> list[np.ndarray]:
    """For each of the paired evaluations (per_seed[s] holds one Outcomes per method), the two-level
    bootstrap's seed means: an array (resamples,) per method. One seed: the cluster bootstrap alone."""
    rng = np.random.default_rng(seed)
    seeds = len(per_seed)
    methods = len(per_seed[0])
    # stats[m][s, j, r]: method m's metric on seed s, as drawn into slot j of resample r
    stats = [np.empty((seeds, seeds, resamples)) for _ in range(methods)]
    for s, evaluations in enumerate(per_seed):
        # the same draws for every method
        weights = _draws(rng, evaluations[0].num_clusters, (seeds, resamples))
        for m, outcomes in enumerate(evaluations):
            stats[m][s] = outcomes.resampled(weights)
    if seeds == 1:
        return [stat[0, 0] for stat in stats]
    picked = rng.integers(seeds, size=(resamples, seeds))  # resample r, slot j draws seed picked[r, j]
    slots = np.arange(seeds)[None, :]
    runs = np.arange(resamples)[:, None]
    return [stat[picked, slots, runs].mean(axis=1) for stat in stats]


def _percentiles(values: np.ndarray, level: float) -> tuple[float, float]:
    tail = (1 - level) / 2
    low, high = np.nanquantile(values, [tail, 1 - tail], method="inverted_cdf")  # the p-value's own quantiles
    return float(low), float(high)


def _check_seeds(per_seed: Sequence) -> None:
    if not per_seed:
        raise ValueError("no evaluations to resample")


def estimate(per_seed: Sequence[Outcomes], resamples: int = RESAMPLES, seed: int = SEED,
             level: float = LEVEL) -> Estimate:
    """One metric over one or more seeds' evaluations: seed mean and two-level bootstrap interval."""
    _check_seeds(per_seed)
    values = tuple(o.value() for o in per_seed)
    (means,) = _seed_resamples([[o] for o in per_seed], resamples, seed)
    return Estimate(float(np.mean(values)), *_percentiles(means, level), values)


def estimate_together(metrics: Sequence[Outcomes], resamples: int = RESAMPLES, seed: int = SEED,
                      level: float = LEVEL) -> list[Estimate]:
    """Several metrics of one evaluation over the same units (e.g. R@1, R@5, R@10), each with its interval,
    from one set of draws: the same intervals `estimate` gives each alone, at one draw's cost."""
    resampled = _seed_resamples([list(metrics)], resamples, seed)
    return [Estimate(o.value(), *_percentiles(r, level), (o.value(),)) for o, r in zip(metrics, resampled,
                                                                                       strict=True)]


def _same_units(a: Outcomes, b: Outcomes, seed: int) -> None:
    if a.ids is not None and b.ids is not None:
        same = len(a.ids) == len(b.ids) and np.array_equal(a.ids, b.ids)
    else:
        same = len(a.clusters) == len(b.clusters)
    if not same or not np.array_equal(a.clusters, b.clusters):
        raise ValueError(f"seed {seed}: the two evaluations were not scored on the same queries; "
                         "a paired comparison needs the same benchmark, split and data")


def paired(a: Sequence[Outcomes], b: Sequence[Outcomes], resamples: int = RESAMPLES, seed: int = SEED,
           level: float = LEVEL) -> Difference:
    """A vs B on the same queries and seeds (a[s] and b[s] are seed s's evaluations of each)."""
    _check_seeds(a)
    if len(a) != len(b):
        raise ValueError(f"A has {len(a)} seeds, B {len(b)}: a paired comparison needs the same seeds")
    for s, (x, y) in enumerate(zip(a, b, strict=True)):
        _same_units(x, y, s)
    mean_a, mean_b = _seed_resamples(list(zip(a, b, strict=True)), resamples, seed)
    values_a, values_b = tuple(o.value() for o in a), tuple(o.value() for o in b)
    point_a, point_b = float(np.mean(values_a)), float(np.mean(values_b))
    differences = mean_a - mean_b
    with np.errstate(divide="ignore", invalid="ignore"):
        ratios = np.where(mean_b > 0, mean_a / np.where(mean_b > 0, mean_b, 1), np.inf)
    return Difference(
        Estimate(point_a, *_percentiles(mean_a, level), values_a),
        Estimate(point_b, *_percentiles(mean_b, level), values_b),
        point_a - point_b, *_percentiles(differences, level), _two_sided(differences, 0.0),
        point_a / point_b if point_b > 0 else float("inf"), *_percentiles(ratios, level), differences)


def _two_sided(differences: np.ndarray, threshold: float) -> float:
    """Twice the smaller share of resamples on either side of the threshold; 0 means below 1 / resamples."""
    return float(min(1.0, 2 * min(np.mean(differences <= threshold), np.mean(differences >= threshold))))


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm's step-down adjusted p-values, in the input's order: a claim holds at α when its adjusted p < α,
    and the family's chance of any false claim stays ≤ α."""
    order = np.argsort(p_values, kind="stable")
    m = len(p_values)
    adjusted = np.empty(m)
    running = 0.0
    for rank, index in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p_values[index]))
        adjusted[index] = running
    return adjusted.tolist()


HOLDS, FAILS, NOISE = "holds", "does not hold", "within noise"


@dataclass(frozen=True)
class Claim:
    """"A − B > threshold" (a negative threshold: A is at most that far behind), judged on a paired
    difference; a target may also ask the estimate to reach `min_value` (e.g. +10 mIoU) or the ratio A / B to
    reach `min_ratio` with its interval above `ratio_floor`."""

    name: str
    difference: Difference
    threshold: float = 0.0
    min_value: float | None = None
    min_ratio: float | None = None
    ratio_floor: float | None = None


@dataclass(frozen=True)
class Verdict:
    claim: Claim
    p_adjusted: float
    verdict: str  # HOLDS, FAILS or NOISE


def judge(claims: Sequence[Claim], alpha: float = 1 - LEVEL) -> list[Verdict]:
    """Each claim's verdict with Holm's correction over all of them. It does not hold when the difference lies
    on the wrong side of its threshold with adjusted p < alpha, or its estimate misses the target's size or
    ratio; it holds when the difference lies beyond the threshold with adjusted p < alpha (and the ratio's
    interval clears its floor); otherwise it is within noise."""
    adjusted = holm([c.difference.p_at(c.threshold) for c in claims])
    verdicts = []
    for claim, p in zip(claims, adjusted, strict=True):
        d = claim.difference
        beyond, significant = d.value > claim.threshold, p < alpha
        size_met = ((claim.min_value is None or d.value >= claim.min_value)
                    and (claim.min_ratio is None or d.ratio >= claim.min_ratio))
        floor_met = claim.ratio_floor is None or d.ratio_low > claim.ratio_floor
        if (significant and not beyond) or not size_met:
            verdict = FAILS
        elif significant and floor_met:
            verdict = HOLDS
        else:
            verdict = NOISE
        verdicts.append(Verdict(claim, p, verdict))
    return verdicts
