"""Sweep workers as real processes on one SQLite study: concurrent workers, pruning, a killed worker and
resuming, a torchrun trial. Training is the micro-32 preset on the session's tiny data set."""

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
import yaml

from flair_lab.sweeps import is_surplus, load_sweep_config, open_study
from tests.helpers.paths import REPO
from tests.helpers.processes import private_network

pytestmark = pytest.mark.integration
T2I = "retrieval/builtin_fine_grained/flair/t2i_r1"


def sweep_file(tmp_path, tiny_data, **changes) -> Path:
    sweep = {"study": "w", "storage": f"sqlite:///{tmp_path}/optuna.db",
             "base_params": ["params/cpu.yaml", "params/pipeline.yaml"],
             "trial_overrides": ["train.steps_per_epoch=3", "train.validate_every=1", "loader.workers=0",
                                 "train.batch_size=8", f"train.samples_per_epoch={512}"],
             "space": {"sampling.k": {"type": "int", "low": 1, "high": 10},
                       "method.settings.tcs_weight": {"type": "float", "low": 0.0, "high": 1.0}},
             "objectives": [{"metric": T2I}], "n_trials": 4, "pruner": "none", "threads_per_worker": 1,
             "runs_dir": str(tmp_path / "runs"), "report_dir": str(tmp_path / "reports"),
             "best_params_out": str(tmp_path / "best.yaml")}
    sweep.update(changes)
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump({"sweep": sweep}))
    return path


def wait_until_training(proc, metrics, steps: int = 3) -> None:
    """Until the worker's trial has logged `steps` steps (it fails if the worker ends first)."""
    deadline = time.time() + 300
    while not (metrics.is_file() and len(metrics.read_text().splitlines()) >= steps):
        assert proc.poll() is None and time.time() < deadline, proc.communicate()[0][-2000:]
        time.sleep(0.5)


def worker(config_path, tiny_data, index=None, prefix=()):
    command = [*prefix, sys.executable, "-m", "flows.sweep", "worker", "--config", str(config_path),
               "--data-root", str(tiny_data)]
    if index is not None:
        command += ["--worker-index", str(index)]
    return subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})


def finish(process, timeout=600) -> str:
    output, _ = process.communicate(timeout=timeout)
    assert process.returncode == 0, output[-3000:]
    return output


def trial_numbers(output: str) -> list[int]:
    return json.loads(re.search(r"worker finished: trials (\[.*\])", output).group(1))


def test_two_workers_share_one_study_without_duplicates_or_lost_results(tmp_path, tiny_data):
    path = sweep_file(tmp_path, tiny_data, n_trials=6)
    config = load_sweep_config(path)
    open_study(config)  # as the flow does: created once before the workers start
    outputs = [finish(p) for p in [worker(path, tiny_data, i) for i in range(2)]]
    mine = [trial_numbers(out) for out in outputs]
    assert all(mine) and not set(mine[0]) & set(mine[1]), mine  # both worked, never on the same trial
    study = open_study(config)
    counted = [t for t in study.trials if not is_surplus(t)]  # a worker that asked once the study was full
    assert sorted(mine[0] + mine[1]) == [t.number for t in counted] == list(range(6))
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in counted)
    for trial in counted:  # every result reached the storage: the value is the run's last validation
        lines = (tmp_path / "runs" / "w" / f"trial-{trial.number:04d}" / "val_metrics.jsonl").read_text()
        last = json.loads(lines.splitlines()[-1])
        assert (last["step"] == 3 and last[T2I] == trial.value
                and sorted(trial.intermediate_values) == [1, 2, 3])
    assert len({tuple(sorted(t.params.items())) for t in counted}) == 6  # differently seeded workers
    assert not list((tmp_path / "runs" / "w").glob("trial-*/checkpoints"))  # trials keep no weights


def test_a_trial_below_the_median_is_pruned_and_recorded_as_pruned(tmp_path, tiny_data):
    path = sweep_file(tmp_path, tiny_data, pruner="median", n_trials=4)
    config = load_sweep_config(path)
    study = open_study(config)
    distributions = {"sampling.k": optuna.distributions.IntDistribution(1, 10),
                     "method.settings.tcs_weight": optuna.distributions.FloatDistribution(0, 1)}
    for k in (2, 3, 4):  # three earlier trials that validated at 100 (the pruner's 3 start-up trials)
        study.add_trial(optuna.trial.create_trial(value=100.0, params={"sampling.k": k,
                                                                       "method.settings.tcs_weight": 0.5},
                                                  distributions=distributions,
                                                  intermediate_values={1: 100.0, 2: 100.0, 3: 100.0}))
    assert trial_numbers(finish(worker(path, tiny_data, 0))) == [3]
    pruned = open_study(config).trials[3]
    assert pruned.state == optuna.trial.TrialState.PRUNED and pruned.last_step == 1
    steps = (tmp_path / "runs" / "w" / "trial-0003" / "metrics.jsonl").read_text().splitlines()
    assert len(steps) == 1  # stopped after its first validation, not trained to the end


def test_a_killed_worker_fails_its_trial_and_a_rerun_resumes_without_repeating(tmp_path, tiny_data):
    # first a short completed trial
    short = sweep_file(tmp_path, tiny_data, n_trials=1, heartbeat_seconds=1, grace_seconds=3)
    finish(worker(short, tiny_data, 0))
    done = open_study(load_sweep_config(short)).trials[0]
    # then a long trial, killed while it trains
    path = sweep_file(tmp_path, tiny_data, n_trials=3, heartbeat_seconds=1, grace_seconds=3,
                      trial_overrides=["train.steps_per_epoch=400", "train.validate_every=400",
                                       "loader.workers=0", "train.batch_size=8",
                                       "train.samples_per_epoch=512"])
    config = load_sweep_config(path)
    victim = worker(path, tiny_data, 0)
    wait_until_training(victim, tmp_path / "runs" / "w" / "trial-0001" / "metrics.jsonl")
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    assert open_study(config).trials[1].state == optuna.trial.TrialState.RUNNING  # nobody has noticed yet
    time.sleep(4)  # past the grace period
    rerun = sweep_file(tmp_path, tiny_data, n_trials=3, heartbeat_seconds=1, grace_seconds=3)
    finish(worker(rerun, tiny_data, 0))
    trials = open_study(load_sweep_config(rerun)).trials
    assert [t.state.name for t in trials] == ["COMPLETE", "FAIL", "COMPLETE", "COMPLETE"]
    # not re-run
    assert trials[0].datetime_complete == done.datetime_complete and trials[0].value == done.value


def test_a_sigterm_ends_the_worker_after_recording_its_trial_as_failed(tmp_path, tiny_data):
    """Before, a SIGTERM failed the running trial and the worker went on with the next one."""
    path = sweep_file(tmp_path, tiny_data, n_trials=3,
                      trial_overrides=["train.steps_per_epoch=400", "train.validate_every=400",
                                       "loader.workers=0", "train.batch_size=8",
                                       "train.samples_per_epoch=512"])
    victim = worker(path, tiny_data, 0)
    wait_until_training(victim, tmp_path / "runs" / "w" / "trial-0000" / "metrics.jsonl")
    victim.send_signal(signal.SIGTERM)
    output = victim.communicate(timeout=120)[0]
    assert victim.returncode == 143, output[-2000:]
    assert "sweep worker: stopped by SIGTERM at step" in output
    trials = open_study(load_sweep_config(path)).trials
    assert [t.state.name for t in trials] == ["FAIL"]  # and no next trial was started
    assert trials[0].user_attrs["fail_reason"].startswith("Stopped: stopped by SIGTERM")


def test_every_rank_of_a_torchrun_trial_trains_with_the_same_parameters(tmp_path, tiny_data):
    path = sweep_file(tmp_path, tiny_data, n_trials=2, procs_per_trial=2)
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    process = subprocess.Popen([*private_network(), *torchrun, "-m", "flows.sweep", "worker", "--config",
                                str(path), "--data-root", str(tiny_data), "--worker-index", "0"], cwd=REPO,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               env={**os.environ, "OMP_NUM_THREADS": "1"})
    output = finish(process)
    seen = re.findall(r"rank (\d) of 2: trial (\d+) with (\{.*\})", output)
    by_trial = {}
    for rank, number, params in seen:
        by_trial.setdefault(number, {})[rank] = params
    assert sorted(by_trial) == ["0", "1"], output[-3000:]
    assert all(set(ranks) == {"0", "1"} and len(set(ranks.values())) == 1 for ranks in by_trial.values())
    study = open_study(load_sweep_config(path))
    assert [t.state.name for t in study.trials] == ["COMPLETE", "COMPLETE"]
    for trial in study.trials:  # what the ranks trained with is what the study recorded
        trained = json.loads(by_trial[str(trial.number)]["0"])  # (floats cross the group as float32)
        assert trained["sampling.k"] == trial.params["sampling.k"]
        assert trained["method.settings.tcs_weight"] == pytest.approx(
            trial.params["method.settings.tcs_weight"], rel=1e-6)
