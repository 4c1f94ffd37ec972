"""Retrieval metrics: the original's values on the fixture, hand-checked multi-positive cases, chance levels
against brute force, bootstrap intervals, non-finite scores refused."""

import itertools
import json
import math

import pytest
import torch
from safetensors.torch import load_file

from flair_core.data.retrieval_sets import relevance_matrix
from flair_core.evaluation.metrics import (
    chance_mean_rank,
    chance_recall,
    ranks,
    recall_intervals,
    retrieval_metrics,
)


@pytest.mark.parametrize("mode,key",
                         [("flair", "retrieval_scores_flair"), ("global", "retrieval_scores_global")])
def test_metrics_match_the_original_on_the_fixture(reference_fixture, mode, key):
    expected = json.loads((reference_fixture / "retrieval_metrics.json").read_text())
    scores = load_file(str(reference_fixture / "tensors.safetensors"))[key]
    img2txt = expected["img2txt"]  # image id -> its caption ids; image ids are remapped in loader order
    positives = [[] for _ in range(scores.shape[1])]
    for image_index, image_id in enumerate(expected["image_ids"]):
        for text in img2txt[str(image_id)]:
            positives[text].append(image_index)
    ours, _ = retrieval_metrics(scores, scores, relevance_matrix(scores.shape[0], positives))
    for direction, short in (("text_to_image", "t2i"), ("image_to_text", "i2t")):
        original = expected["metrics"][mode]
        for k in (1, 5, 10):
            assert ours[f"{short}_r{k}"] == pytest.approx(100 * original[f"{direction}_R@{k}"])
        assert ours[f"{short}_mean_rank"] == pytest.approx(original[f"{direction}_mean_rank"])
        assert ours[f"{short}_median_rank"] == original[f"{direction}_median_rank"]


def test_rank_is_the_position_of_the_best_positive():
    scores = torch.tensor([[0.9, 0.8, 0.1, 0.5],
                           [0.1, 0.2, 0.3, 0.4]])
    positives = torch.tensor([[False, True, True, False],   # best positive 0.8: one item above -> rank 1
                              [True, False, False, False]])  # only positive scores lowest -> rank 3
    assert ranks(scores, positives).tolist() == [1, 3]


def test_multi_positive_queries_count_any_correct_image():
    # 3 images, 2 texts; text 0 is satisfied by images 0 and 2, text 1 by image 1 only.
    relevant = relevance_matrix(3, [[0, 2], [1]])
    scores = torch.tensor([[0.1, 0.0],
                           [0.5, 0.9],
                           [0.7, 0.2]])  # text 0's best image is 2, a correct one
    m, _ = retrieval_metrics(scores, scores, relevant)
    assert m["t2i_r1"] == 100.0
    strict, _ = retrieval_metrics(scores, scores, relevance_matrix(3, [[0], [1]]))
    assert strict["t2i_r1"] == 50.0  # strict: text 0 must find image 0, ranked third
    assert strict["t2i_mean_rank"] == pytest.approx((3 + 1) / 2)
    assert strict["i2t_r1"] == 100.0  # image 2 is no text's source: left out of strict image->text
    # image->text: image 0's only text (0) scores above text 1 -> rank 0; image 2 likewise
    assert m["i2t_r1"] == 100.0


def test_median_rank_follows_numpy_floor_of_the_median():
    scores = torch.eye(4)[[0, 1, 2, 3]] * 0 + torch.arange(4.0)  # every row ranks image 3 first
    relevant = torch.eye(4, dtype=torch.bool)  # image i <-> text i
    m, _ = retrieval_metrics(scores, scores, relevant)
    # i2t ranks: image i's text i has score i: ranks 3,2,1,0 -> median 1.5 -> floor + 1 = 2
    assert m["i2t_median_rank"] == 2.0
    assert m["i2t_mean_rank"] == pytest.approx(2.5)


def test_queries_without_positive_are_refused():
    with pytest.raises(ValueError, match="at least one positive"):
        ranks(torch.zeros(2, 2), torch.tensor([[True, False], [False, False]]))


def test_ties_with_wrong_items_count_against_the_query():
    scores = torch.zeros(3, 3)  # a collapsed model: every pair scores alike
    m, _ = retrieval_metrics(scores, scores, torch.eye(3, dtype=torch.bool))
    assert m["t2i_r1"] == 0.0 and m["i2t_r1"] == 0.0
    assert m["t2i_mean_rank"] == 3.0


def test_chance_recall_by_hand():
    one, two = torch.tensor([1]), torch.tensor([2])
    assert chance_recall(one, 4, 1) == pytest.approx(25.0)
    assert chance_recall(two, 4, 1) == pytest.approx(50.0)
    assert chance_recall(two, 4, 2) == pytest.approx(100 * (1 - 1 / 6))  # 1 - C(2,2)/C(4,2)
    assert chance_recall(two, 4, 3) == 100.0  # three picks out of four must hit one of two positives
    assert chance_recall(one, 4, 10) == 100.0  # k beyond the gallery
    assert chance_recall(torch.tensor([1, 2]), 4, 1) == pytest.approx(37.5)  # mean over queries
    assert chance_mean_rank(torch.tensor([1, 3]), 5) == pytest.approx((3 + 1.5) / 2)


@pytest.mark.parametrize("gallery,positives", [(6, 1), (6, 2), (7, 3)])
def test_chance_levels_equal_every_ranking_enumerated(gallery, positives):
    orders = list(itertools.permutations(range(gallery)))  # item at position p; items < positives are correct
    best = torch.tensor([min(order.index(i) for i in range(positives)) for order in orders])  # 0-based
    n = torch.tensor([positives])
    for k in (1, 2, 3, 5, 10):
        assert chance_recall(n, gallery, k) == pytest.approx(100 * (best < k).double().mean().item())
    assert chance_mean_rank(n, gallery) == pytest.approx(best.double().mean().item() + 1)


def test_retrieval_metrics_carry_chance_and_interval_of_every_recall():
    relevant = relevance_matrix(4, [[0], [1], [2], [3], [0, 1]])  # (I=4, T=5): text 4 has two images
    scores = torch.arange(20.0).reshape(4, 5).sin()
    m, _ = retrieval_metrics(scores, scores, relevant)
    # t2i: 5 texts over 4 images, positives 1,1,1,1,2; i2t: image 0 and 1 have two texts of 5, 2 and 3 one
    assert m["t2i_r1_chance"] == pytest.approx(100 * (4 * 0.25 + 0.5) / 5)
    assert m["i2t_r1_chance"] == pytest.approx(100 * (2 * 0.4 + 2 * 0.2) / 4)
    assert m["t2i_mean_rank_chance"] == pytest.approx((4 * 2.5 + 5 / 3) / 5)
    for direction in ("t2i", "i2t"):
        for k in (1, 5, 10):
            name = f"{direction}_r{k}"
            assert m[f"{name}_ci_low"] <= m[name] <= m[f"{name}_ci_high"]


def test_recall_interval_is_seeded_and_contains_the_estimate():
    rank = torch.randint(0, 20, (200,), generator=torch.Generator().manual_seed(1))
    clusters = torch.arange(200) // 4
    interval = recall_intervals(rank, clusters)
    assert interval == recall_intervals(rank, clusters)  # same seed, same interval
    for k, (low, high) in interval.items():
        assert low < 100 * (rank < k).double().mean().item() < high
    assert recall_intervals(torch.zeros(50, dtype=torch.long), clusters[:50])[1] == (100.0, 100.0)


def test_recall_interval_narrows_with_queries_like_the_binomial_when_each_query_is_its_own_cluster():
    generator = torch.Generator().manual_seed(2)
    widths = {}
    for q in (100, 10_000):
        rank = (torch.rand(q, generator=generator) >= 0.3).long() * 10  # R@1 ~ 30 %
        low, high = recall_intervals(rank, torch.arange(q), ks=(1,))[1]
        p = (rank < 1).double().mean().item()
        widths[q] = (high - low, 100 * 2 * 1.96 * math.sqrt(p * (1 - p) / q))  # (bootstrap, normal approx)
    assert widths[10_000][0] < widths[100][0] / 5  # ~1/sqrt(100) as wide
    assert widths[10_000][0] == pytest.approx(widths[10_000][1], rel=0.1)


def test_retrieval_metrics_resample_clusters_and_keep_each_querys_rank():
    """Texts 0-3 describe image 0 or 1 (one cluster), texts 4-7 image 2 or 3 (another): whole clusters are
    drawn, and each direction's ranks come back with their query and cluster."""
    relevant = relevance_matrix(4, [[0], [0], [1], [1], [2], [2], [3], [3]])
    scores = torch.randn(4, 8, generator=torch.Generator().manual_seed(3))
    image_cluster = torch.tensor([0, 0, 1, 1])
    text_cluster = image_cluster[[0, 0, 1, 1, 2, 2, 3, 3]]
    metrics, ranked = retrieval_metrics(scores, scores, relevant, image_cluster, text_cluster)
    alone, _ = retrieval_metrics(scores, scores, relevant)
    assert metrics["t2i_r1"] == alone["t2i_r1"]  # clusters change the interval, not the value
    assert ranked["t2i"].cluster.tolist() == [0, 0, 0, 0, 1, 1, 1, 1]
    assert ranked["t2i"].query.tolist() == list(range(8)) and ranked["i2t"].query.tolist() == [0, 1, 2, 3]
    assert ranked["t2i"].rank.tolist() == ranks(scores.T, relevant.T).tolist()
    by_cluster = sorted((100 * (ranked["t2i"].rank < 1).double().view(2, 4).mean(dim=1)).tolist())
    # two clusters of four: a resample holds one twice (p = 1/4 each way), so the interval spans their means
    assert (metrics["t2i_r1_ci_low"], metrics["t2i_r1_ci_high"]) == pytest.approx(tuple(by_cluster))


def test_non_finite_scores_are_refused_not_ranked_first():
    scores = torch.tensor([[float("nan"), 0.0], [float("-inf"), 1.0]])
    with pytest.raises(ValueError, match="2 of 4 scores are not finite"):
        ranks(scores, torch.eye(2, dtype=torch.bool))
