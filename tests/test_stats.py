"""The statistics every verdict rests on, tested on synthetic outcomes whose truth is known: clustered queries
(6 per cluster, each cluster with its own difficulty) as the built-in sets' twin pairs give them."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from flair_core.evaluation.stats import (
    FAILS,
    HOLDS,
    NOISE,
    Claim,
    Difference,
    Estimate,
    Outcomes,
    accuracy_outcomes,
    estimate,
    holm,
    judge,
    miou_outcomes,
    paired,
    recall_outcomes,
)

TRUE_RATE = 0.3
CLUSTERS, PER_CLUSTER = 80, 6


def clustered_hits(rng, rate=TRUE_RATE, clusters=CLUSTERS, spread=4.0, shared=None):
    """Per-query hits (0/1) whose clusters differ in difficulty: p_c ~ Beta with mean `rate` (smaller
    `spread`, more alike within a cluster). `shared` gives two methods the same cluster difficulties (a paired
    design)."""
    difficulty = rng.beta(rate * spread, (1 - rate) * spread, clusters) if shared is None else shared
    hits = rng.random((clusters, PER_CLUSTER)) < difficulty[:, None]
    return hits.ravel(), np.repeat(np.arange(clusters), PER_CLUSTER)


def as_ranks(hits):
    return np.where(hits, 0, 5)


def coverage(draws, interval_of, truth=100 * TRUE_RATE, seed=0):
    rng = np.random.default_rng(seed)
    inside = []
    for _ in range(draws):
        low, high = interval_of(rng)
        inside.append(low <= truth <= high)
    return float(np.mean(inside))


def cluster_interval(rng):
    hits, clusters = clustered_hits(rng)
    e = estimate([recall_outcomes(as_ranks(hits), clusters, 1)], resamples=400)
    return e.low, e.high


def query_interval(rng):
    hits, _ = clustered_hits(rng)
    # each query alone
    e = estimate([recall_outcomes(as_ranks(hits), np.arange(len(hits)), 1)], resamples=400)
    return e.low, e.high


def test_cluster_bootstrap_covers_the_true_recall_about_95_percent_of_the_time_and_query_bootstrap_does_not():
    by_cluster, by_query = coverage(300, cluster_interval), coverage(300, query_interval)
    print(
        f"coverage of a 95 % interval over 300 data sets: clusters {by_cluster:.3f}, queries {by_query:.3f}")
    assert 0.90 <= by_cluster <= 0.99
    assert by_query < 0.85  # queries that share a cluster are not independent: too narrow


def test_clustered_queries_give_wider_intervals_than_independent_ones_with_the_same_hits():
    rng = np.random.default_rng(1)
    hits, clusters = clustered_hits(rng, spread=1.0)
    ranks = as_ranks(hits)
    clustered = estimate([recall_outcomes(ranks, clusters, 1)])
    independent = estimate([recall_outcomes(ranks, np.arange(len(ranks)), 1)])
    assert clustered.value == independent.value == pytest.approx(100 * hits.mean())
    assert clustered.high - clustered.low > 1.5 * (independent.high - independent.low)


def test_an_interval_is_reproducible_and_has_no_width_without_variation():
    ranks, clusters = np.array([0, 3, 0, 1, 0, 7]), np.array([0, 0, 1, 1, 2, 2])
    assert estimate([recall_outcomes(ranks, clusters, 1)]) == estimate([recall_outcomes(ranks, clusters, 1)])
    flat = estimate([recall_outcomes(np.zeros(10), np.arange(10) // 2, 1)])
    assert (flat.value, flat.low, flat.high) == (100.0, 100.0, 100.0)


def test_paired_test_holds_its_false_claim_rate_under_no_difference():
    rng = np.random.default_rng(2)
    false_claims = 0
    for _ in range(200):
        shared = rng.beta(TRUE_RATE * 4, (1 - TRUE_RATE) * 4, CLUSTERS)  # the same queries are hard for both
        a, clusters = clustered_hits(rng, shared=shared)
        b, _ = clustered_hits(rng, shared=shared)
        d = paired([recall_outcomes(as_ranks(a), clusters, 1)], [recall_outcomes(as_ranks(b), clusters, 1)],
                   resamples=400)
        false_claims += d.p < 0.05
        assert (d.low <= 0 <= d.high) == (d.p >= 0.05) or d.p == pytest.approx(0.05)  # interval and p agree
    print(f"false claims at p < 0.05 with no true difference: {false_claims} of 200")
    assert false_claims <= 20


def test_pairing_finds_a_difference_that_two_separate_intervals_miss():
    """Both methods share each cluster's difficulty; B misses 1 in 10 of A's hits. Separate intervals overlap,
    the paired difference excludes 0."""
    rng = np.random.default_rng(3)
    a, clusters = clustered_hits(rng, spread=0.8, clusters=120)
    b = a & (rng.random(len(a)) > 0.1)
    da, db = recall_outcomes(as_ranks(a), clusters, 1), recall_outcomes(as_ranks(b), clusters, 1)
    ea, eb = estimate([da]), estimate([db])
    assert ea.low < eb.high  # the separate intervals overlap
    d = paired([da], [db])
    assert d.value == pytest.approx(ea.value - eb.value)
    assert d.low > 0 and d.p < 0.01
    assert d.ratio == pytest.approx(ea.value / eb.value) and d.ratio_low > 1


def test_seeds_are_the_unit_a_seed_that_disagrees_widens_the_interval():
    rng = np.random.default_rng(4)
    hits, clusters = clustered_hits(rng)
    one = recall_outcomes(as_ranks(hits), clusters, 1)
    agreeing = estimate([one, one, one])
    worse = recall_outcomes(as_ranks(hits & (rng.random(len(hits)) > 0.5)), clusters, 1)
    disagreeing = estimate([one, one, worse])
    assert disagreeing.per_seed == (one.value(), one.value(), worse.value()) and disagreeing.seeds == 3
    assert disagreeing.value == pytest.approx(np.mean(disagreeing.per_seed))
    assert disagreeing.high - disagreeing.low > 1.5 * (agreeing.high - agreeing.low)


def test_two_level_bootstrap_coverage_over_seeds_is_measured():
    """Each seed its own training offset (sd 3 points) and its own test set: with 8 seeds the interval of the
    seed mean covers the truth most of the time; with 3 it is too narrow (the module's docstring says so)."""
    def interval(seeds):
        def draw(rng):
            per_seed = []
            for _ in range(seeds):
                rate = TRUE_RATE + rng.normal(0, 0.03)
                hits, clusters = clustered_hits(rng, rate=rate)
                per_seed.append(recall_outcomes(as_ranks(hits), clusters, 1))
            e = estimate(per_seed, resamples=300)
            return e.low, e.high
        return draw

    eight, three = coverage(100, interval(8), seed=5), coverage(100, interval(3), seed=6)
    print(f"two-level coverage of a 95 % interval: 8 seeds {eight:.3f}, 3 seeds {three:.3f}")
    assert eight >= 0.85
    assert three >= 0.70


def test_paired_comparison_refuses_evaluations_on_different_queries():
    a = recall_outcomes(np.zeros(4), np.array([0, 0, 1, 1]), 1, ids=np.arange(4))
    b = recall_outcomes(np.zeros(4), np.array([0, 0, 1, 1]), 1, ids=np.arange(1, 5))
    with pytest.raises(ValueError, match="not scored on the same queries"):
        paired([a], [b])
    with pytest.raises(ValueError, match="same seeds"):
        paired([a, a], [a])


def test_holm_adjusts_in_step_down_order_and_keeps_the_input_order():
    assert holm([0.01, 0.04, 0.03, 0.5]) == pytest.approx([0.04, 0.09, 0.09, 0.5])
    assert holm([0.2]) == [0.2]
    assert holm([0.6, 0.6]) == [1.0, 1.0]


def test_miou_and_accuracy_resample_whole_images():
    intersection = np.array([[5, 0], [3, 1], [0, 0]])
    union = np.array([[10, 2], [3, 1], [0, 4]])
    outcomes = miou_outcomes(intersection, union, np.arange(3))
    assert outcomes.value() == pytest.approx(100 * np.mean([8 / 13, 1 / 7]))
    e = estimate([outcomes])
    assert e.low <= outcomes.value() <= e.high and e.low < e.high
    accuracy = accuracy_outcomes(np.array([1, 0, 1, 1]), np.arange(4))
    assert accuracy.value() == 75.0


def test_outcomes_reject_mismatched_or_empty_units():
    with pytest.raises(ValueError, match="3 units but 2 cluster ids"):
        Outcomes(np.ones((3, 2)), np.arange(2))
    with pytest.raises(ValueError, match="no units"):
        recall_outcomes(np.array([]), np.array([]), 1)


def outcomes_with_gap(rng, gap: float, clusters: int = 100):
    """A (~30 % R@1) and B, which misses a share `gap` of A's hits, on the same clustered queries."""
    a, cluster = clustered_hits(rng, clusters=clusters)
    b = a & (rng.random(len(a)) > gap)
    return [recall_outcomes(as_ranks(a), cluster, 1)], [recall_outcomes(as_ranks(b), cluster, 1)]


def normal_difference(rng, value: float, sd: float) -> Difference:
    """A difference whose resamples are normal around `value`."""
    resampled = rng.normal(value, sd, 20_000)
    low, high = np.quantile(resampled, [0.025, 0.975])
    same = Estimate(10.0, 9.0, 11.0, (10.0,))
    d = Difference(same, same, value, low, high, 0.0, 1.0, 1.0, 1.0, resampled)
    return replace(d, p=d.p_at(0.0))


def test_claims_are_judged_after_holms_correction_and_against_their_targets():
    rng = np.random.default_rng(7)
    a, b = outcomes_with_gap(rng, 0.6)  # B keeps 40 % of A's hits: ~18 points behind, ratio ~2.5
    clear = paired(a, b, resamples=1000)
    small = normal_difference(rng, 2.0, 1.0)  # p ~ 0.046: on its own, the small gain would count
    none = paired(*outcomes_with_gap(rng, 0.0), resamples=1000)
    assert clear.p < 0.001 and 0.03 < small.p < 0.05
    verdicts = judge([Claim("clear", clear), Claim("small", small), Claim("none", none),
                      Claim("clear and doubled", clear, min_ratio=2.0, ratio_floor=1.5),
                      Claim("clear by 50 points", clear, min_value=50.0),
                      Claim("B within 5 points of A", paired(b, a, resamples=1000), threshold=-5.0)])
    by_name = {v.claim.name: v for v in verdicts}
    assert by_name["clear"].verdict == HOLDS
    assert by_name["small"].p_adjusted > small.p and by_name["small"].verdict == NOISE  # six claims: Holm
    assert by_name["none"].verdict == NOISE
    assert by_name["clear and doubled"].verdict == HOLDS, clear
    assert by_name["clear by 50 points"].verdict == FAILS  # beyond 0, but far from the stated size
    assert by_name["B within 5 points of A"].verdict == FAILS  # B is ~18 points behind, significantly
