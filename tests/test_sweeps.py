"""Sweep configuration, storage and study bookkeeping: the parts of a sweep that need no training."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import optuna
import pytest
import yaml

from flair_core.evaluation.records import records_path, save_records
from flair_core.model_config import ConfigError
from flair_core.run_config import load_run_config
from flair_lab.sweep_report import write_report
from flair_lab.sweeps import load_sweep_config, open_study, pick_trial, safe_url, write_best_params
from tests.helpers.paths import REPO

T2I = "retrieval/builtin_fine_grained/flair/t2i_r1"
LONG = "retrieval/builtin_long/flair/t2i_r1"


def sweep_file(tmp_path, **changes) -> Path:
    sweep = {"study": "s", "storage": f"sqlite:///{tmp_path}/optuna.db",
             "base_params": [str(REPO / "params/cpu.yaml")],
             "space": {"sampling.k": {"type": "int", "low": 1, "high": 10},
                       "method.settings.tcs_weight": {"type": "float", "low": 0.0, "high": 1.0}},
             "objectives": [{"metric": T2I}], "report_dir": str(tmp_path / "reports"),
             "best_params_out": str(tmp_path / "best.yaml")}
    sweep.update(changes)
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump({"sweep": sweep}))
    return path


def test_the_shipped_sweep_file_validates():
    config = load_sweep_config(REPO / "params/sweep.yaml")
    assert {"sampling.k", "sampling.max_sentences", "sampling.length_mode",
            "method.settings.tcs_weight"} <= set(config.space)
    assert (config.space["sampling.k"].low, config.space["sampling.k"].high) == (1, 10)
    assert config.n_trials >= 12 and config.objectives[0].metric == T2I


@pytest.mark.parametrize("changes,message", [
    ({"space": {}}, "the search space is empty"),
    ({"space": {"sampling.k": {"type": "int", "low": 5, "high": 2}}}, "low < high"),
    ({"space": {"sampling.kk": {"type": "int", "low": 1, "high": 2}}},
     "sweep.space.sampling.kk = 1 is not a valid"),
    ({"space": {"sampling.k": {"type": "int", "low": 0, "high": 3}}},
     "sweep.space.sampling.k = 0 is not a valid"),
    ({"space": {"train.lr": {"type": "float", "low": 0, "high": 1, "log": True}}}, "log scale needs low > 0"),
    ({"space": {"sampling.length_mode": {"type": "categorical"}}}, "non-empty `choices`"),
    ({"objectives": [{"metric": T2I}, {"metric": LONG}]}, "pruning needs a single objective"),
    ({"objectives": []}, "sweep.objectives"),
    ({"study": "a b"}, "sweep.study"),
])
def test_bad_sweep_configs_give_one_line(changes, message, tmp_path):
    with pytest.raises(ConfigError, match=message.replace(".", r"\.").replace("(", r"\(")) as err:
        load_sweep_config(sweep_file(tmp_path, **changes))
    assert "\n" not in str(err.value)


def test_unreachable_storage_is_one_line_without_the_password(tmp_path):
    config = load_sweep_config(sweep_file(tmp_path, storage="postgresql://flair:secret@127.0.0.1:1/optuna"))
    with pytest.raises(ConfigError, match="optuna storage postgresql://flair:\\*\\*\\*@127.0.0.1:1/optuna is "
                                          "not reachable") as err:
        open_study(config)
    assert "secret" not in str(err.value) and "\n" not in str(err.value)
    assert safe_url("sqlite:///x.db") == "sqlite:///x.db"


def test_a_study_reopened_with_another_space_is_refused_and_the_same_space_resumes(tmp_path):
    config = load_sweep_config(sweep_file(tmp_path))
    study = open_study(config)
    study.enqueue_trial({"sampling.k": 3, "method.settings.tcs_weight": 0.5})
    again = open_study(load_sweep_config(sweep_file(tmp_path)))
    # The storage still holds one study, under the name both carry: `again` is the study `study` created.
    assert optuna.get_all_study_names(config.storage) == [study.study_name] == [again.study_name]
    assert len(again.trials) == 1
    other = sweep_file(tmp_path, space={"sampling.k": {"type": "int", "low": 1, "high": 4}})
    with pytest.raises(ConfigError,
                       match="study 's' already exists in sqlite:///.* with a different space: choose"):
        open_study(load_sweep_config(other))
    objectives = sweep_file(tmp_path, objectives=[{"metric": LONG}])
    with pytest.raises(ConfigError, match="different objectives"):
        open_study(load_sweep_config(objectives))


def finished(study, values, params):
    distributions = {"sampling.k": optuna.distributions.IntDistribution(1, 10),
                     "method.settings.tcs_weight": optuna.distributions.FloatDistribution(0, 1)}
    study.add_trial(optuna.trial.create_trial(values=values, params=params, distributions=distributions))


def test_best_params_file_is_a_complete_params_file_pretrain_eval_accepts(tmp_path):
    config = load_sweep_config(sweep_file(tmp_path))
    study = open_study(config)
    finished(study, [3.0], {"sampling.k": 2, "method.settings.tcs_weight": 0.1})
    finished(study, [7.5], {"sampling.k": 6, "method.settings.tcs_weight": 0.8})
    finished(study, [5.0], {"sampling.k": 9, "method.settings.tcs_weight": 0.3})
    path, number = write_best_params(study, config, config.best_params_out)
    assert number == 1
    run = load_run_config([path])
    base = load_run_config([REPO / "params/cpu.yaml"])
    assert run.sampling.k == 6 and run.method_settings().tcs_weight == 0.8
    assert run.train == base.train and run.data == base.data  # only the searched keys differ
    assert "Best trial 1 of study 's'" in path.read_text().splitlines()[0]


def test_best_params_of_a_baselines_study_train_that_baseline_with_its_own_recipe(tmp_path):
    """The method a study tunes (base_overrides) is in the exported file; the shortened budget is not."""
    config = load_sweep_config(sweep_file(
        tmp_path, base_overrides=["method.name=clip"], trial_overrides=["train.epochs=1"],
        space={"train.lr": {"type": "float", "low": 1e-4, "high": 1e-3},
               "method.settings.text": {"type": "categorical", "choices": ["long_caption", "sub_caption"]}}))
    study = open_study(config)
    study.add_trial(optuna.trial.create_trial(values=[3.0], params={
        "train.lr": 2e-4, "method.settings.text": "sub_caption"}, distributions={
        "train.lr": optuna.distributions.FloatDistribution(1e-4, 1e-3),
        "method.settings.text": optuna.distributions.CategoricalDistribution(["long_caption",
                                                                              "sub_caption"])}))
    path, _ = write_best_params(study, config, config.best_params_out)
    run = load_run_config([path])
    base = load_run_config([REPO / "params/cpu.yaml"])
    assert run.method.name == "clip" and run.train.lr == 2e-4
    assert run.method_settings().text == "sub_caption" and run.method_settings().loss == "softmax"  # recipe
    assert run.train.epochs == base.train.epochs  # a full-length run, not the trial's
    assert "method.name=clip" in path.read_text().splitlines()[1]


def test_multi_objective_export_takes_the_chosen_trade_off_from_the_pareto_front(tmp_path):
    objectives = [{"metric": T2I}, {"metric": LONG}]
    config = load_sweep_config(sweep_file(tmp_path, objectives=objectives, pruner="none",
                                          trade_off=[0.9, 0.1]))
    study = open_study(config)
    finished(study, [9.0, 1.0], {"sampling.k": 1, "method.settings.tcs_weight": 1.0})  # grounding
    finished(study, [6.0, 6.0], {"sampling.k": 4, "method.settings.tcs_weight": 0.5})
    finished(study, [1.0, 9.0], {"sampling.k": 8, "method.settings.tcs_weight": 0.0})  # global alignment
    finished(study, [4.0, 4.0], {"sampling.k": 5, "method.settings.tcs_weight": 0.4})  # dominated
    assert pick_trial(study, config).number == 0
    balanced = load_sweep_config(sweep_file(tmp_path, objectives=objectives, pruner="none", study="s"))
    assert pick_trial(study, balanced).number == 1  # equal weights: the balanced trial
    summary, files = write_report(study, config)
    assert sorted(t["number"] for t in summary["pareto"]) == [0, 1, 2]
    assert (tmp_path / "reports" / "s" / "pareto.png") in files and all(p.is_file() for p in files)


def test_report_has_importances_and_a_plot_per_searched_setting(tmp_path):
    config = load_sweep_config(sweep_file(tmp_path))
    study = open_study(config)
    for k in range(1, 9):  # the objective follows K only
        finished(study, [float(k)], {"sampling.k": k, "method.settings.tcs_weight": (k * 0.37) % 1})
    summary, files = write_report(study, config)
    assert summary["best"]["number"] == 7 and summary["states"] == {"COMPLETE": 8}
    importances = summary["importances"][T2I]
    assert importances["sampling.k"] > importances["method.settings.tcs_weight"]
    names = {p.name for p in files}
    assert {"objective_vs_sampling_k.png", "objective_vs_method_settings_tcs_weight.png", "importances.png",
            "history.png", "summary.json", "trials.csv"} <= names
    rows = (tmp_path / "reports" / "s" / "trials.csv").read_text().splitlines()
    assert rows[0].split(",")[:3] == ["number", "state", T2I] and "sampling.k" in rows[0] and len(rows) == 9


def test_cli_errors_are_one_line_with_exit_2(tmp_path):
    result = subprocess.run([sys.executable, "-m", "flows.sweep", "worker", "--config",
                             str(sweep_file(tmp_path, space={}))], cwd=REPO, capture_output=True, text=True,
                            check=False)
    assert result.returncode == 2
    assert result.stderr.strip().endswith("the search space is empty: give at least one key under `space`")
    assert result.stderr.count("\n") == 1, result.stderr


def test_a_worker_that_asks_after_the_study_filled_stops_without_overshooting(tmp_path, monkeypatch):
    from flair_lab import sweep_trials
    from flair_lab.sweep_report import summarize
    from flair_lab.sweeps import is_surplus

    config = load_sweep_config(sweep_file(tmp_path, n_trials=2))
    study = open_study(config)
    for value in (1.0, 2.0):  # another worker's two finished trials
        study.add_trial(optuna.trial.create_trial(params={}, distributions={}, value=value))
    # this worker counted before the other's last trial existed: the stale read that used to overshoot
    monkeypatch.setattr(sweep_trials, "finished_or_running", lambda study: 1)
    assert sweep_trials.run_worker(config, str(tmp_path), worker=0) == []  # it trained nothing
    study = open_study(config)
    extra = study.trials[-1]
    assert len(study.trials) == 3 and is_surplus(extra) and extra.state == optuna.trial.TrialState.PRUNED
    assert summarize(study, config)["states"] == {"COMPLETE": 2}  # the surplus trial is not reported


def test_report_says_which_trials_the_best_beats_beyond_its_validation_interval(tmp_path):
    config = load_sweep_config(sweep_file(tmp_path))
    study = open_study(config)
    for number, (value, low, high) in enumerate([(8.0, 7.0, 9.0), (7.5, 6.5, 8.5), (4.0, 3.0, 5.0),
                                                 (5.0, 4, 6)]):
        run_dir = tmp_path / f"trial-{number}"
        run_dir.mkdir()
        lines = [{"step": 128, T2I: 1.0},
                 {"step": 256, T2I: value, f"{T2I}_ci_low": low, f"{T2I}_ci_high": high,
                  f"{T2I}_chance": 0.59}]
        (run_dir / "val_metrics.jsonl").write_text("\n".join(json.dumps(line) for line in lines) + "\n")
        trial = study.ask({"sampling.k": optuna.distributions.IntDistribution(1, 10)})
        trial.set_user_attr("run_dir", str(run_dir))
        study.tell(trial, value)
    summary, _ = write_report(study, config)
    assert summary["trials"][0]["interval"] == {"ci_low": 7.0, "ci_high": 9.0, "chance": 0.59}
    assert summary["separation"]["best"] == 0
    assert summary["separation"]["beaten"] == [2, 3] and summary["separation"]["within"] == [1]
    header = (tmp_path / "reports" / "s" / "trials.csv").read_text().splitlines()[0].split(",")
    assert header[3:6] == ["ci_low", "ci_high", "chance"]


def test_separation_is_paired_on_the_validation_queries_when_trials_kept_their_records(tmp_path):
    """Trial 1 misses 3 of the best trial's 90 hits (not separable); trial 2 keeps half of them (beaten)."""
    config = load_sweep_config(sweep_file(tmp_path))
    study = open_study(config)
    best_hits = np.arange(300) < 90
    others = [best_hits & (np.arange(300) >= 3), best_hits & (np.arange(300) % 2 == 0)]
    for number, hits in enumerate([best_hits, *others]):
        run_dir = tmp_path / f"trial-{number}"
        (run_dir / "validation").mkdir(parents=True)
        save_records(records_path(run_dir / "validation", "builtin_fine_grained"), {
            "t2i/query": np.arange(300), "t2i/cluster": np.arange(300) // 2,
            "flair/t2i/rank": np.where(hits, 0, 7)})
        trial = study.ask({"sampling.k": optuna.distributions.IntDistribution(1, 10)})
        trial.set_user_attr("run_dir", str(run_dir))
        study.tell(trial, 100 * hits.mean())
    summary, _ = write_report(study, config)
    assert summary["separation"]["best"] == 0
    assert summary["separation"]["beaten"] == [2] and summary["separation"]["within"] == [1]
    assert "paired on the same validation queries, Holm over 2 comparisons" in summary["separation"]["text"]


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_a_trial_whose_objective_is_not_finite_fails_and_is_never_best(tmp_path, monkeypatch, value):
    from flair_lab import sweep_trials

    class Trainer:  # stands in for training: validates twice, the last time to `value`
        def __init__(self, config, out, on_validation):
            self.on_validation, self.val_metrics = on_validation, {}

        def fit(self):
            for step, metric in ((1, 3.0), (2, value)):
                self.val_metrics = {T2I: metric}
                self.on_validation(step, self.val_metrics)

    monkeypatch.setattr(sweep_trials, "Trainer", Trainer)
    config = load_sweep_config(sweep_file(tmp_path, n_trials=1, pruner="none"))
    study = open_study(config)
    study.add_trial(optuna.trial.create_trial(
        params={"sampling.k": 2, "method.settings.tcs_weight": 0.5},
        distributions={"sampling.k": optuna.distributions.IntDistribution(1, 10),
                       "method.settings.tcs_weight": optuna.distributions.FloatDistribution(0, 1)},
        value=1.0))
    config = load_sweep_config(sweep_file(tmp_path, n_trials=2, pruner="none"))
    with pytest.raises(RuntimeError,
                       match=r"last 3 trials failed; the last one: EvaluationError: .* is not finite$"):
        sweep_trials.run_worker(config, str(tmp_path), worker=0)
    study = open_study(config)
    assert [t.state.name for t in study.trials] == ["COMPLETE", "FAIL", "FAIL", "FAIL"]
    assert study.best_trial.number == 0  # the finite one, whatever the broken ones "scored"
