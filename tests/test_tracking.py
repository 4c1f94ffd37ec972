"""The promotion rule (`decide`), the data-level tag and the main job's table cells: no services."""

import json

import numpy as np
import pytest

from flair_core.evaluation import stats
from flair_lab.main_job_table import cells
from flair_lab.tracking import data_level, decide

P = "retrieval/builtin_fine_grained/flair/t2i_r1"
OTHER = "retrieval/builtin_long/flair/t2i_r1"


def scored(value: float, low: float | None = None, high: float | None = None, chance: float | None = None,
           **others: float) -> dict[str, float]:
    """A run's metrics: the primary with its interval and chance level where given, plus others."""
    metrics = {P: value, **{OTHER if k == "long" else k: v for k, v in others.items()}}
    for suffix, v in (("_ci_low", low), ("_ci_high", high), ("_chance", chance)):
        if v is not None:
            metrics[P + suffix] = v
    return metrics


@pytest.mark.parametrize("candidate, champion, alias, reason", [
    (scored(6.7, 5.9, 7.5, 0.4), None, "champion", f"first version: {P} = 6.70 [5.90, 7.50]"),
    (scored(1.0, 0.0, 2.5, 1.56), None, "champion",
     f"first version: {P} = 1.00 [0.00, 2.50], not beyond chance (1.56)"),
    (scored(6.7, 5.9, 7.5, 0.4), scored(4.57), "champion",
     (f"{P} 6.70 [5.90, 7.50] beats 4.57 beyond its interval (+2.13; the champion kept no per-query records: "
     "not paired), no regression")),
    (scored(4.87, 4.1, 5.6, 0.4), scored(4.57), "challenger",
     (f"{P} gain +0.30 over 4.57 is within the interval [4.10, 5.60] (the champion kept no per-query "
     "records: not paired): stays challenger")),
    (scored(5.0, 4.57, 5.5, 0.4), scored(4.57), "challenger",  # the low bound must exceed, not reach, the bar
     (f"{P} gain +0.43 over 4.57 is within the interval [4.57, 5.50] (the champion kept no per-query "
     "records: not paired): stays challenger")),
    (scored(3.0, 1.5, 4.5, 1.56), scored(0.5), "challenger",  # beats a poor champion, but only by chance
     f"{P} 3.00 [1.50, 4.50] is not beyond chance (1.56): stays challenger"),
    (scored(4.0, 3.5, 4.5, 0.4), scored(4.57), "challenger",
     f"{P} 4.00 [3.50, 4.50] does not beat the champion's 4.57 (-0.57)"),
    (scored(6.7, 5.9, 7.5, 0.4, long=10.0), scored(4.57, long=20.0), "challenger",
     f"{P} 6.70 [5.90, 7.50] +2.13 but {OTHER} drops 10.00 (tolerance 2.00)"),
    # nothing that is not a number is ever promoted (NaN compares false: it would pass every test)
    (scored(float("nan")), None, "challenger", f"{P} = nan is not finite: never promoted"),
    (scored(float("nan"), 5.9, 7.5, 0.4), scored(4.57), "challenger",
     f"{P} = nan is not finite: never promoted"),
    (scored(6.7, 5.9, 7.5, 0.4, long=float("inf")), scored(4.57, long=1.0), "challenger",
     f"{OTHER} = inf is not finite: never promoted"),
    (scored(6.7, 5.9, 7.5, 0.4), scored(float("nan")), "champion",
     f"{P} 6.70 [5.90, 7.50]: the champion has no finite {P}"),
    (scored(6.7), scored(4.57), "champion",
     f"{P} 6.70 beats 4.57 (+2.13; no interval recorded), no regression"),
    (scored(6.7), None, "champion", f"first version: {P} = 6.70"),
])
def test_promotion_needs_a_gain_beyond_the_interval_and_says_so(candidate, champion, alias, reason):
    assert decide(candidate, champion, P, tolerance=2.0) == (alias, reason)


def paired_runs(candidate_hits, champion_hits):
    """Both runs' primary metric on the same 60 queries in 20 clusters of 3, paired."""
    clusters = np.arange(60) // 3
    return stats.paired([stats.recall_outcomes(np.where(candidate_hits, 0, 9), clusters, 1)],
                        [stats.recall_outcomes(np.where(champion_hits, 0, 9), clusters, 1)])


def test_paired_gate_promotes_a_gain_on_the_same_queries_that_separate_intervals_would_miss():
    """The challenger answers every query the champion does, and 6 more: +10 points on the same queries. Its
    own interval [~3, ~21] would not clear the champion's 11.67, the paired difference does."""
    champion_hits = np.zeros(60, bool)
    champion_hits[::9] = True  # 7 of 60
    candidate_hits = champion_hits.copy()
    candidate_hits[1:60:10] = True  # and 6 more
    difference = paired_runs(candidate_hits, champion_hits)
    assert difference.low > 0
    alias, reason = decide(scored(21.67, 11.0, 33.0, 1.0), scored(11.67), P, 2.0, difference)
    assert alias == "champion" and reason.startswith(f"{P} 21.67 beats 11.67: paired difference +10.00 [")
    assert reason.endswith("no regression")


def test_paired_gate_keeps_the_champion_when_the_difference_is_within_noise():
    rng = np.random.default_rng(0)
    champion_hits = rng.random(60) < 0.3
    candidate_hits = champion_hits ^ (rng.random(60) < 0.15)  # changes both ways
    difference = paired_runs(candidate_hits, champion_hits)
    assert difference.low <= 0
    candidate, champion = 100 * candidate_hits.mean(), 100 * champion_hits.mean()
    alias, reason = decide(scored(candidate, candidate - 5, candidate + 5, 1.0), scored(champion), P, 2.0,
                           difference)
    assert alias == "challenger" and "paired difference" in reason and reason.endswith("stays challenger")


def test_a_primary_metric_that_was_not_evaluated_is_an_error():
    with pytest.raises(ValueError, match="was not evaluated"):
        decide({OTHER: 1.0}, None, P, 2.0)


def test_the_main_jobs_table_shows_interval_and_chance_where_recorded():
    metrics = {**scored(6.7, 5.9, 7.5, 0.4), "retrieval/builtin_long/flair/t2i_r1": 3.0,
               "segmentation/builtin_segmentation/patch/miou": 20.0}
    assert cells(metrics, "flair") == ["6.70 [5.90, 7.50] (chance 0.40)", "-", "3.00", "-", "20.00", "-"]


def test_the_data_level_comes_from_meta_json_and_old_data_is_hard(tmp_path):
    assert data_level(tmp_path) == ""  # no built-in data here
    (tmp_path / "meta.json").write_text(json.dumps({"config": {"level": "easy", "image_size": 64}}))
    assert data_level(tmp_path) == "easy"
    (tmp_path / "meta.json").write_text(json.dumps({"config": {"image_size": 64}}))  # before levels existed
    assert data_level(tmp_path) == "hard"


def test_the_report_states_each_run_s_budget():
    from flair_lab.main_job_table import budget

    assert budget({"train/steps": 1024.0, "train/seconds": 306.0}) == "1024 steps, 5.1 min"
    assert budget({"train/steps": 8.0}) == "8 steps"
    assert budget({}) == "-"


def test_world_size_is_read_back_from_the_logged_rate():
    from flair_lab.tracking import world_size

    config = {"train": {"batch_size": 32}}
    assert world_size([{"samples_per_s": 128.0, "seconds": 0.5}], config) == 2  # 64 samples in 0.5 s
    assert world_size([{"samples_per_s": 64.0}], config) == 1  # older runs: no per-step seconds


def test_a_run_with_a_metric_that_is_not_finite_is_refused_before_mlflow_is_touched(tmp_path, monkeypatch):
    from flair_lab import tracking

    monkeypatch.setattr(tracking, "MlflowClient", lambda *a, **k: pytest.fail("MLflow was contacted"))
    monkeypatch.setattr(tracking.mlflow, "start_run", lambda *a, **k: pytest.fail("a run was started"))
    with pytest.raises(ValueError) as caught:
        tracking.log_training_run(tmp_path, "flair", {P: 6.2, OTHER: float("nan")}, {"run_key": "k"}, "e")
    assert str(caught.value) == (f"{tmp_path}: 1 evaluation metrics are not finite, first: {OTHER} = nan; "
                                 "nothing logged or registered")
