"""A sweep worker: it takes trials of one study until the study has its `n_trials`, each trial a shortened
training run of the library's Trainer, scored on the built-in validation split.

Run it alone (`python -m flows.sweep worker`), several at once, on several machines against one PostgreSQL
storage, or under torchrun: then rank 0 asks Optuna and every rank trains with the same parameters
(`optuna_integration.TorchDistributedTrial` broadcasts them).
"""

from __future__ import annotations

import json
import logging
import math
import shutil
from pathlib import Path

import optuna
import torch
from optuna_integration import TorchDistributedTrial

from flair_core import distributed
from flair_core.evaluation.metrics import EvaluationError
from flair_core.model_config import ConfigError
from flair_core.run_config import load_run_config
from flair_core.training.loop import Stopped, Trainer
from flair_lab.sweeps import (
    FINISHED,
    SURPLUS,
    SweepConfig,
    as_overrides,
    finished_or_running,
    is_surplus,
    open_study,
    suggest,
)

log = logging.getLogger(__name__)
MAX_FAILURES_IN_A_ROW = 3  # a worker whose every trial fails has a broken set-up, not unlucky parameters


def trial_dir(config: SweepConfig, number: int) -> Path:
    return Path(config.runs_dir) / config.study / f"trial-{number:04d}"


def run_trial(trial: optuna.trial.BaseTrial, config: SweepConfig, data_root: str) -> list[float]:
    """Train with the trial's parameters; report each validation (single objective: pruning may stop it)."""
    params = suggest(trial, config.space)
    rank, world = distributed.current()
    log.info("rank %d of %d: trial %d with %s", rank, world, trial.number, json.dumps(params, sort_keys=True))
    overrides = [f"train.shards={data_root}/train", *config.base_overrides, *config.trial_overrides,
                 *as_overrides(params)]
    run_config = load_run_config(list(config.base_params), overrides)
    if run_config.train.validate_every is None:  # validate once, at the end
        run_config = load_run_config(list(config.base_params),
                                     [*overrides, "train.validate_every=1000000000"])
    objectives = config.objectives
    first = objectives[0].metric

    def report(step: int, metrics: dict[str, float]) -> None:
        missing = [o.metric for o in objectives if o.metric not in metrics]
        if missing:
            raise ConfigError(f"objective {missing[0]!r} is not a validation metric (have: "
                              f"{', '.join(metrics)})")
        if not math.isfinite(metrics[first]):
            raise EvaluationError(f"step {step}: validation {first} = {metrics[first]} is not finite")
        if len(objectives) == 1:
            trial.report(metrics[first], step)
            if trial.should_prune():
                raise optuna.TrialPruned(f"step {step}: {first} = {metrics[first]:.2f}")

    out = trial_dir(config, trial.number)
    if rank == 0 and out.exists():  # a folder left by an earlier study of the same name
        shutil.rmtree(out)
    trainer = Trainer(run_config, out, on_validation=report)
    try:
        trainer.fit()
    finally:
        if rank == 0:  # a trial's weights are not kept: its params are
            shutil.rmtree(out / "checkpoints", ignore_errors=True)
    values = [trainer.val_metrics[o.metric] for o in objectives]
    broken = [(o.metric, v) for o, v in zip(objectives, values, strict=True) if not math.isfinite(v)]
    if broken:  # Optuna records the trial as failed: it is never best, never exported
        raise EvaluationError(
            f"trial {trial.number}: objective {broken[0][0]} = {broken[0][1]} is not finite")
    return values


def stop_at_n_trials(n_trials: int):
    """Stop once the study has n finished trials, counting other workers' running ones (no overshoot)."""
    def callback(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        if finished_or_running(study) >= n_trials:
            study.stop()
    return callback


def stop_after_repeated_failures():
    failures = []

    def callback(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        failures.append(trial.state == optuna.trial.TrialState.FAIL)
        if failures[-MAX_FAILURES_IN_A_ROW:] == [True] * MAX_FAILURES_IN_A_ROW:
            study.stop()
    return callback


def run_worker(config: SweepConfig, data_root: str, on_trial_end=None,
               worker: int | None = None) -> list[int]:
    """Trials until the study is full; returns this worker's trial numbers. `on_trial_end(study, trial)` runs
    on rank 0 after each trial in any state (the flow logs the trial to MLflow there)."""
    world = distributed.init()
    try:
        if not world.is_main:
            while _broadcast(None):  # rank 0 says whether another trial follows
                try:
                    run_trial(TorchDistributedTrial(None), config, data_root)
                except optuna.TrialPruned:
                    pass
            return []
        return _main_rank(config, data_root, on_trial_end, world.size, worker)
    finally:
        distributed.shutdown()


def _main_rank(config: SweepConfig, data_root: str, on_trial_end, world_size: int, worker: int | None
               ) -> list[int]:
    study = open_study(config, worker)
    mine: list[int] = []
    stopped: list[Stopped] = []

    def objective(trial: optuna.Trial) -> list[float] | float:
        # Two workers can both see n − 1 trials and both ask for one more. The storage numbers trials in
        # order, so the later one finds n counted trials before its own: it stops instead of overshooting.
        earlier = study.get_trials(deepcopy=False, states=(*FINISHED, optuna.trial.TrialState.RUNNING))
        if sum(t.number < trial.number and not is_surplus(t) for t in earlier) >= config.n_trials:
            trial.set_user_attr(SURPLUS, True)
            study.stop()
            raise optuna.TrialPruned("the study already has n_trials trials")
        mine.append(trial.number)
        trial.set_user_attr("run_dir", str(trial_dir(config, trial.number)))
        if world_size > 1:
            _broadcast(True)
        try:
            values = run_trial(TorchDistributedTrial(trial) if world_size > 1 else trial, config, data_root)
        except optuna.TrialPruned:
            raise
        except Stopped as stop:  # SIGTERM: the worker was asked to end, not to go on with the next trial
            trial.set_user_attr("fail_reason", f"Stopped: {stop}")
            stopped.append(stop)
            study.stop()
            raise
        except Exception as err:  # Optuna logs the error but keeps no reason with the trial: keep one line
            trial.set_user_attr("fail_reason", f"{type(err).__name__}: {err}".splitlines()[0])
            raise
        return values if len(values) > 1 else values[0]

    callbacks = [stop_at_n_trials(config.n_trials), stop_after_repeated_failures()]
    if on_trial_end is not None:
        callbacks.append(on_trial_end)
    # A failed trial is recorded and the next one starts; in a torchrun group the other ranks cannot tell
    # where rank 0 failed, so there the failure (recorded too) ends the worker.
    if finished_or_running(study) < config.n_trials:
        study.optimize(objective, callbacks=callbacks, catch=(Exception,) if world_size == 1 else (),
                       gc_after_trial=True)
    if world_size > 1:
        _broadcast(False)
    if stopped:  # the trial is recorded as failed with why; a re-run starts a new one in its place
        raise stopped[0]
    last = [study.trials[n] for n in mine[-MAX_FAILURES_IN_A_ROW:]]
    if len(last) == MAX_FAILURES_IN_A_ROW and not any(t.state in FINISHED for t in last):
        reason = last[-1].user_attrs.get("fail_reason", "no reason recorded")
        raise RuntimeError(
            f"this worker's last {MAX_FAILURES_IN_A_ROW} trials failed; the last one: {reason}")
    return mine


def _broadcast(flag: bool | None) -> bool:
    box = [flag]
    torch.distributed.broadcast_object_list(box, src=0)
    return bool(box[0])
