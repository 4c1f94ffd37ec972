"""The equal-budget study's plan, without running it: the shipped study file validates, every planned run is a
valid run config at the same budget, and configurations that coincide share one cached run."""

import pytest

from flair_core.model_config import ConfigError
from flows.equal_budget_study import data_dir, load_study_config, planned_runs, resolved, run_key
from tests.helpers.paths import REPO


@pytest.mark.parametrize("quick", [False, True])
def test_every_planned_run_of_the_shipped_study_is_a_valid_run_at_one_budget(quick, tmp_path):
    config = load_study_config(REPO / "params/study.yaml", quick)
    runs = planned_runs(config)
    params = [resolved(config, run, data_dir(config, run.seed, "code")) for run in runs]
    assert {p["train"]["epochs"] for p in params} == {2 if not quick else 1}  # the equal budget
    keys = {run: run_key(p, config.benchmarks, "code") for run, p in zip(runs, params, strict=True)}
    by_label = {(r.group, r.label, r.seed): k for r, k in keys.items()}
    flair = [p for run, p in zip(runs, params, strict=True) if (run.group, run.label) == ("methods", "flair")]
    assert {p["method"]["settings"]["tcs_weight"] for p in flair} == {0.359}  # the paper's TCS + MPS, tuned
    if quick:  # its "K 5" is FLAIR's recipe: one cached run serves both rows
        assert by_label[("k", "K 5", 0)] == by_label[("methods", "flair", 0)]
    else:
        # 3 seeds × 4 methods and 14 ablations × 2 seeds, each its own training (none is the recipe itself)
        assert len(runs) == 40 and len(set(keys.values())) == 40
        assert by_label[("loss", "TCS only", 0)] != by_label[("methods", "flair", 0)]
        assert by_label[("methods", "flair", 0)] != by_label[("methods", "flair", 1)]  # seeds differ
        assert params[0]["data"]["seed"] == 0 and "seed1-" in str(data_dir(config, 1, "code"))
    assert run_key(params[0], config.benchmarks, "other code") != keys[runs[0]]  # new code, new runs


def test_a_bad_study_file_is_one_line(tmp_path):
    path = tmp_path / "study.yaml"
    path.write_text("study: {name: s, base_params: [params/cpu.yaml], budget: [], seeds: []}\n")
    with pytest.raises(ConfigError, match="study.seeds") as err:
        load_study_config(path)
    assert "\n" not in str(err.value)
