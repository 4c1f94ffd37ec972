"""Retrieval metrics: the original's values on the fixture, and hand-checked multi-positive cases."""

import json

import pytest
import torch
from safetensors.torch import load_file

from flair_core.evaluation.metrics import ranks, relevance_matrix, retrieval_metrics


@pytest.mark.parametrize("mode,key", [("flair", "retrieval_scores_flair"), ("global", "retrieval_scores_global")])
def test_metrics_match_the_original_on_the_fixture(reference_fixture, mode, key):
    expected = json.loads((reference_fixture / "retrieval_metrics.json").read_text())
    scores = load_file(str(reference_fixture / "tensors.safetensors"))[key]
    img2txt = expected["img2txt"]  # image id -> its caption ids; image ids are remapped in loader order
    positives = [[] for _ in range(scores.shape[1])]
    for image_index, image_id in enumerate(expected["image_ids"]):
        for text in img2txt[str(image_id)]:
            positives[text].append(image_index)
    ours = retrieval_metrics(scores, scores, relevance_matrix(scores.shape[0], positives))
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
    m = retrieval_metrics(scores, scores, relevant)
    assert m["t2i_r1"] == 100.0
    strict = retrieval_metrics(scores, scores, relevance_matrix(3, [[0], [1]]))
    assert strict["t2i_r1"] == 50.0  # strict: text 0 must find image 0, ranked third
    assert strict["t2i_mean_rank"] == pytest.approx((3 + 1) / 2)
    assert strict["i2t_r1"] == 100.0  # image 2 is no text's source: left out of strict image->text
    # image->text: image 0's only text (0) scores above text 1 -> rank 0; image 2 likewise
    assert m["i2t_r1"] == 100.0


def test_median_rank_follows_numpy_floor_of_the_median():
    scores = torch.eye(4)[[0, 1, 2, 3]] * 0 + torch.arange(4.0)  # every row ranks image 3 first
    relevant = torch.eye(4, dtype=torch.bool)  # image i <-> text i
    m = retrieval_metrics(scores, scores, relevant)
    # i2t ranks: image i's text i has score i: ranks 3,2,1,0 -> median 1.5 -> floor + 1 = 2
    assert m["i2t_median_rank"] == 2.0
    assert m["i2t_mean_rank"] == pytest.approx(2.5)


def test_queries_without_positive_are_refused():
    with pytest.raises(ValueError, match="at least one positive"):
        ranks(torch.zeros(2, 2), torch.tensor([[True, False], [False, False]]))


def test_ties_with_wrong_items_count_against_the_query():
    scores = torch.zeros(3, 3)  # a collapsed model: every pair scores alike
    m = retrieval_metrics(scores, scores, torch.eye(3, dtype=torch.bool))
    assert m["t2i_r1"] == 0.0 and m["i2t_r1"] == 0.0
    assert m["t2i_mean_rank"] == 3.0
