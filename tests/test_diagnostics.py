"""Diagnostics of the built-in retrieval sets: R@1 by fact type and minimal-pair accuracy, by hand and on the
generated data with scorers whose answers are known."""

import numpy as np
import pytest
import torch

from flair_core import create_model, get_tokenizer, get_transform
from flair_core.data.retrieval_sets import RetrievalTask, builtin_task, relevance_matrix
from flair_core.evaluation.comparison import build_table
from flair_core.evaluation.diagnostics import diagnostic_metrics, minimal_pairs, pair_margins
from flair_core.evaluation.headline import headline
from flair_core.evaluation.metrics import ranks
from flair_core.evaluation.records import RecordsError, outcomes
from flair_core.evaluation.retrieval import evaluate_retrieval
from flair_core.evaluation.runner import EvalOptions, run_benchmark

PREFIX = "retrieval/toy/flair"


def toy_task() -> RetrievalTask:
    """Two twin pairs (images 0|1 differ in a colour, 2|3 in a shape) and six texts; text 1 is also true of
    its twin (image 1), text 5 of an image outside its pair (image 0)."""
    positives = [[0], [0, 1], [1], [2], [3], [3, 0]]
    return RetrievalTask("toy", [f"text {t}" for t in range(6)], relevance_matrix(4, positives), None,
                         lambda: iter(()), 4, torch.arange(4) // 2, torch.tensor([0, 0, 1, 2, 3, 3]),
                         fact_type=("object", "object", "relation", "relation", "merged", "object"),
                         twin=torch.arange(4) ^ 1, twin_change=("colour", "colour", "shape", "shape"))


def test_recall_by_fact_type_is_the_hand_count_over_that_type():
    task = toy_task()
    records = {"t2i/query": np.arange(6), "t2i/cluster": np.array([0, 0, 0, 1, 1, 1]),
               "flair/t2i/rank": np.array([0, 3, 0, 1, 0, 2]), "text/fact_type": np.array(task.fact_type)}
    metrics = diagnostic_metrics(records, task, ("flair",))
    # hits: object (texts 0, 1, 5) 1 of 3; relation (2, 3) 1 of 2; merged (4) 1 of 1
    expected = {"object": 100 / 3, "relation": 50.0, "merged": 100.0}
    # chance R@1 = mean over the type's texts of positives / 4 images
    chance = {"object": 100 * (1 + 2 + 2) / 3 / 4, "relation": 25.0, "merged": 25.0}
    for kind, value in expected.items():
        key = f"{PREFIX}/t2i_r1/by_fact/{kind}"
        assert metrics[key] == pytest.approx(value)
        assert metrics[key + "_chance"] == pytest.approx(chance[kind])
        assert metrics[key + "_ci_low"] <= value <= metrics[key + "_ci_high"]
    assert metrics["retrieval/toy/num_texts/by_fact/object"] == 3
    merged = f"{PREFIX}/t2i_r1/by_fact/merged"
    assert (metrics[merged + "_ci_low"], metrics[merged + "_ci_high"]) == (100.0, 100.0)  # one query, a hit
    with pytest.raises(RecordsError, match="no 'count' queries"):
        outcomes(records, "flair/t2i_r1/by_fact/count")


def test_minimal_pair_accuracy_is_the_hand_count_of_wins_with_ties_as_half():
    task = toy_task()
    pairs = minimal_pairs(task)
    assert pairs["pair/query"].tolist() == [0, 2, 3, 4, 5]  # text 1 is true of its twin: no minimal pair
    assert pairs["pair/cluster"].tolist() == [0, 0, 1, 1, 1]
    assert pairs["pair/change"].tolist() == ["colour", "colour", "shape", "shape", "shape"]
    t2i = torch.zeros(4, 6)  # (I, T)
    t2i[0, 0], t2i[1, 0] = 2.0, 1.0  # text 0: its image wins by 1
    t2i[1, 2], t2i[0, 2] = 0.0, 1.0  # text 2: loses by 1
    t2i[2, 3] = t2i[3, 3] = 3.0  # text 3: a tie
    t2i[3, 4], t2i[2, 4] = 2.0, 0.0  # text 4: wins by 2
    t2i[3, 5], t2i[2, 5], t2i[0, 5] = 0.5, 0.0, 9.0  # text 5: wins; image 0 is a positive, not the twin
    margins = pair_margins(t2i, task, pairs["pair/query"])
    assert margins.tolist() == [1.0, -1.0, 0.0, 2.0, 0.5]
    metrics = diagnostic_metrics({**pairs, "flair/pair/margin": margins}, task, ("flair",))
    assert metrics[f"{PREFIX}/minimal_pair/colour"] == pytest.approx(50.0)  # win, loss
    assert metrics[f"{PREFIX}/minimal_pair/shape"] == pytest.approx(100 * 2.5 / 3)  # tie, win, win
    assert metrics[f"{PREFIX}/minimal_pair"] == pytest.approx(100 * 3.5 / 5)
    assert metrics[f"{PREFIX}/minimal_pair/shape_chance"] == 50.0
    assert metrics["retrieval/toy/num_texts/minimal_pair/shape"] == 3
    assert metrics["retrieval/toy/num_texts/minimal_pair"] == 5
    # one pair per change: the interval over twin pairs collapses to the value
    assert metrics[f"{PREFIX}/minimal_pair/colour_ci_low"] == metrics[f"{PREFIX}/minimal_pair/colour_ci_high"]
    assert metrics[f"{PREFIX}/minimal_pair_ci_low"] < metrics[f"{PREFIX}/minimal_pair_ci_high"]


@pytest.fixture(scope="module")
def model():
    return create_model("micro-32", "flair").eval()


def evaluate_with_scores(model, task: RetrievalTask, scores: torch.Tensor, monkeypatch) -> tuple[dict, dict]:
    """`evaluate_retrieval` on the task with the model's scores replaced by `scores` (I, T), both directions
    (nothing embedded: the scores do not use it)."""
    monkeypatch.setattr("flair_core.evaluation.retrieval.encode", lambda *args: {})
    monkeypatch.setattr(model, "retrieval_scores", lambda *args: (scores, scores))
    return evaluate_retrieval(model, get_tokenizer(model.config), get_transform(model.config, False), task,
                              modes=("flair",))


@pytest.fixture(scope="module")
def fine_grained(tiny_data) -> RetrievalTask:
    return builtin_task(tiny_data, "test", "fine_grained")


def diagnostic_keys(metrics: dict, name: str) -> dict:
    """The flair mode's values (not their intervals and chance) of the metrics named `name`."""
    return {k: v for k, v in metrics.items()
            if k.startswith(f"retrieval/builtin_fine_grained/flair/{name}")
            and not k.endswith(("_ci_low", "_ci_high", "_chance"))}


def test_an_oracle_is_always_right_and_a_constant_scorer_is_at_chance(model, fine_grained, monkeypatch):
    oracle, _ = evaluate_with_scores(model, fine_grained, fine_grained.relevant.float(), monkeypatch)
    by_fact, pairs = diagnostic_keys(oracle, "t2i_r1/by_fact/"), diagnostic_keys(oracle, "minimal_pair")
    assert set(by_fact) == {f"retrieval/builtin_fine_grained/flair/t2i_r1/by_fact/{kind}"
                            for kind in ("object", "relation", "merged")}
    assert len(pairs) >= 3 and set(by_fact.values()) == set(pairs.values()) == {100.0}
    constant_scores = torch.zeros(fine_grained.relevant.shape)
    constant, _ = evaluate_with_scores(model, fine_grained, constant_scores, monkeypatch)
    pairs = diagnostic_keys(constant, "minimal_pair")
    assert len(pairs) >= 3 and set(pairs.values()) == {50.0}
    assert all(constant[k + "_chance"] == 50.0 for k in pairs)


def test_a_random_scorer_averages_each_types_chance_level(model, fine_grained, monkeypatch):
    """The chance level of R@1 by fact type is what random scores get on average, type by type."""
    generator = torch.Generator().manual_seed(0)
    metrics, records = evaluate_with_scores(model, fine_grained, torch.randn(fine_grained.relevant.shape,
                                                                      generator=generator), monkeypatch)
    fact_type = np.array(fine_grained.fact_type)
    hits = {kind: [] for kind in set(fine_grained.fact_type)}
    for _ in range(300):
        scores = torch.randn(fine_grained.relevant.shape, generator=generator)
        hit = (ranks(scores.T, fine_grained.relevant.T) < 1).numpy()
        for kind, found in hits.items():
            found.append(hit[fact_type == kind].mean())
    for kind, found in hits.items():
        chance = metrics[f"retrieval/builtin_fine_grained/flair/t2i_r1/by_fact/{kind}_chance"]
        assert 100 * np.mean(found) == pytest.approx(chance, abs=0.5), kind
    # and each metric is its records' value: recomputable after the fact
    found = diagnostic_keys(metrics, "t2i_r1/by_fact/") | diagnostic_keys(metrics, "minimal_pair")
    assert len(found) >= 6
    for key, value in found.items():
        metric = key.removeprefix("retrieval/builtin_fine_grained/")
        assert outcomes(records, metric).value() == pytest.approx(value), key


def test_the_new_keys_leave_headline_metrics_and_comparison_tables_alone(model, fine_grained, monkeypatch):
    metrics, _ = evaluate_with_scores(model, fine_grained, fine_grained.relevant.float(), monkeypatch)
    plain = {k: v for k, v in metrics.items() if "by_fact" not in k and "minimal_pair" not in k}
    assert len(plain) < len(metrics)
    assert headline(metrics) == headline(plain)
    with_diagnostics, without = build_table({"run": metrics}), build_table({"run": plain})
    assert (with_diagnostics.columns, with_diagnostics.values) == (without.columns, without.values)


def test_validation_leaves_the_diagnostics_out(tiny_data):
    """Training's validation asks for headline metrics only (`diagnostics=False`); their records stay."""
    model = create_model("micro-32", "clip")
    options = EvalOptions(diagnostics=False)
    metrics = run_benchmark(model, "builtin_fine_grained", tiny_data, "val", options)
    assert "retrieval/builtin_fine_grained/global/t2i_r1" in metrics
    assert not [k for k in metrics if "by_fact" in k or "minimal_pair" in k]
