"""Optuna studies over FLAIR's knobs: the search space from a params file, RDB storage, one trial = a
shortened training run of the library's Trainer scored on the built-in validation split.

Everything Optuna-specific lives here; the flow (`flows/sweep.py`) and its workers only call these functions.
A study is identified by its name in its storage: workers on one machine or many (PostgreSQL URL) share it,
and running the sweep again resumes it.
"""

from __future__ import annotations

import json
import os
import re
import warnings
from pathlib import Path
from typing import Literal

import optuna
import sqlalchemy.exc
import yaml
from pydantic import Field, model_validator

from flair_core.model_config import ConfigError, Frozen
from flair_core.run_config import (
    RunConfig,
    load_run_config,
    load_section,
    merged_params,
    validate,
)
from services.stack import OPTUNA_STORAGE_ENV

FINISHED = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
# Heartbeats (how a killed worker's trial gets marked failed) are "experimental" since Optuna 2.9.
warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)


class ParamSpace(Frozen):
    """One searched setting, named by its params key (e.g. `sampling.k`)."""

    type: Literal["int", "float", "categorical"]
    low: float | None = None
    high: float | None = None
    log: bool = False
    choices: tuple[str | int | float | bool, ...] = ()

    @model_validator(mode="after")
    def _bounds(self) -> ParamSpace:
        if self.type == "categorical":
            if not self.choices:
                raise ValueError("categorical needs a non-empty `choices` list")
        elif self.low is None or self.high is None or not self.low < self.high:
            raise ValueError(f"{self.type} needs low < high (got low={self.low}, high={self.high})")
        elif self.log and self.low <= 0:
            raise ValueError("log scale needs low > 0")
        elif self.type == "int" and not (float(self.low).is_integer() and float(self.high).is_integer()):
            raise ValueError(f"int needs whole-number bounds (got low={self.low}, high={self.high})")
        return self

    def distribution(self) -> optuna.distributions.BaseDistribution:
        if self.type == "int":
            return optuna.distributions.IntDistribution(int(self.low), int(self.high), log=self.log)
        if self.type == "float":
            return optuna.distributions.FloatDistribution(self.low, self.high, log=self.log)
        return optuna.distributions.CategoricalDistribution(list(self.choices))

    def extremes(self) -> list:
        if self.type == "categorical":
            return list(self.choices)
        return [int(self.low), int(self.high)] if self.type == "int" else [self.low, self.high]


class Objective(Frozen):
    metric: str = Field(description="a validation metric name, e.g. "
                                    "retrieval/builtin_fine_grained/flair/t2i_r1")
    direction: Literal["maximize", "minimize"] = "maximize"


class SweepConfig(Frozen):
    study: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    storage: str = Field("sqlite:///sweeps/optuna.db",
                         description="SQLAlchemy URL: sqlite:///… or postgresql://…")
    base_params: tuple[str, ...] = ("params/cpu.yaml",)
    base_overrides: tuple[str, ...] = Field((), description="settings of every trial that the exported best "
                                                             "params keep too (e.g. method.name)")
    trial_overrides: tuple[str, ...] = Field((), description="what makes a trial a shortened run")
    space: dict[str, ParamSpace]
    objectives: tuple[Objective, ...] = Field(min_length=1)
    n_trials: int = Field(12, ge=1, description="finished (complete or pruned) trials the study aims for")
    n_workers: int = Field(1, ge=1, description="worker processes the flow starts on this machine")
    threads_per_worker: int | None = Field(None, ge=1)
    procs_per_trial: int = Field(1, ge=1,
                                 description="torchrun processes per trial (same params on every rank)")
    sampler: Literal["tpe", "random"] = "tpe"
    seed: int | None = 0
    pruner: Literal["median", "hyperband", "none"] = "median"
    pruner_warmup_steps: int = Field(0, ge=0, description="no pruning before this training step")
    heartbeat_seconds: int = Field(10, ge=1, description="a worker's trials beat this often...")
    grace_seconds: int = Field(30, ge=2,
                               description="...and are failed when silent this long (killed worker)")
    trade_off: tuple[float, ...] | None = Field(None, description="multi-objective: weights picking the "
                                                                  "exported Pareto trial (default: equal)")
    best_params_out: str = "params/best.yaml"
    report_dir: str = "reports/sweeps"
    runs_dir: str = "runs/sweeps"

    @model_validator(mode="after")
    def _consistent(self) -> SweepConfig:
        if not self.space:
            raise ValueError("the search space is empty: give at least one key under `space`")
        if len(self.objectives) > 1 and self.pruner != "none":
            raise ValueError(f"pruning needs a single objective: set pruner: none for {len(self.objectives)} "
                             "objectives")
        if self.trade_off is not None and len(self.trade_off) != len(self.objectives):
            raise ValueError(f"trade_off has {len(self.trade_off)} weights for {len(self.objectives)} "
                             "objectives")
        if self.grace_seconds <= self.heartbeat_seconds:
            raise ValueError("grace_seconds must exceed heartbeat_seconds")
        return self

    @property
    def directions(self) -> list[str]:
        return [o.direction for o in self.objectives]


def load_sweep_config(path: str | Path, overrides: list[str] = ()) -> SweepConfig:
    """The `sweep:` section of a params file, checked down to the keys it searches."""
    config = load_section(SweepConfig, "sweep", path, overrides)
    shared = os.environ.get(OPTUNA_STORAGE_ENV)
    if shared and not any(o.removeprefix("sweep.").startswith("storage=") for o in overrides):
        # The services' PostgreSQL (`--db postgres`): its URL holds a password, so it comes from the
        # environment, never from a params file or a flow parameter. An explicit --set storage=… still wins.
        # Set on the checked config rather than passed as an override: an override's errors quote it, password
        # and all. (storage is a plain string: there is nothing more to check.)
        config = config.model_copy(update={"storage": shared})
    # Every searched key must name a real setting: build the run config at each end of its range.
    for key, space in config.space.items():
        for value in space.extremes():
            try:
                load_run_config(list(config.base_params), [*config.base_overrides, *config.trial_overrides,
                                                           f"{key}={json.dumps(value)}"])
            except ConfigError as err:
                raise ConfigError(
                    f"{path}: sweep.space.{key} = {value!r} is not a valid setting ({err})") from None
    return config


def safe_url(url: str) -> str:
    """The storage URL without its password (for logs, tags and errors)."""
    return re.sub(r"://([^:/@]+):[^@]*@", r"://\1:***@", url)


def storage(config: SweepConfig) -> optuna.storages.RDBStorage:
    if config.storage.startswith("sqlite:///"):
        Path(config.storage.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    try:
        return optuna.storages.RDBStorage(config.storage, heartbeat_interval=config.heartbeat_seconds,
                                          grace_period=config.grace_seconds,
                                          engine_kwargs={"pool_pre_ping": True})
    except (sqlalchemy.exc.SQLAlchemyError, ImportError, ValueError) as err:
        reason = str(getattr(err, "orig", None) or err).splitlines()[0]
        raise ConfigError(f"optuna storage {safe_url(config.storage)} is not reachable: {reason}") from None


def space_signature(config: SweepConfig) -> dict:
    """What must not change between runs of one study: its space and its objectives."""
    return {"space": {k: v.model_dump(mode="json") for k, v in sorted(config.space.items())},
            "objectives": [o.model_dump(mode="json") for o in config.objectives]}


def sampler(config: SweepConfig, worker: int | None, resumed_at: int = 0) -> optuna.samplers.BaseSampler:
    """Each worker its own seed: equally seeded workers would propose the same trials, and so would a resumed
    worker repeat its first proposals (hence `resumed_at`, the study's trial count). A worker started by hand
    without an index is unseeded. constant_liar keeps concurrent TPE workers apart."""
    seed = None if config.seed is None or worker is None else config.seed + worker + 1000 * resumed_at
    if config.sampler == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    return optuna.samplers.TPESampler(seed=seed, multivariate=True, constant_liar=True,
                                      n_startup_trials=max(3, config.n_trials // 3))


def pruner(config: SweepConfig) -> optuna.pruners.BasePruner:
    if config.pruner == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=config.pruner_warmup_steps)
    if config.pruner == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=max(1, config.pruner_warmup_steps))
    return optuna.pruners.NopPruner()


def open_study(config: SweepConfig, worker: int | None = 0) -> optuna.Study:
    """Create the study, or load it if it exists with the same space and objectives."""
    signature = space_signature(config)
    study = optuna.create_study(study_name=config.study, storage=storage(config),
                                sampler=sampler(config, worker), pruner=pruner(config),
                                directions=config.directions, load_if_exists=True)
    if study.trials:
        study.sampler = sampler(config, worker, resumed_at=len(study.trials))
    stored = study.user_attrs.get("signature")
    if stored is None:
        study.set_user_attr("signature", signature)
    elif stored != signature:
        changed = sorted(k for k in ("space", "objectives") if stored[k] != signature[k])
        raise ConfigError(f"study {config.study!r} already exists in {safe_url(config.storage)} with a "
                          f"different {' and '.join(changed)}: choose a new study name")
    return study


def suggest(trial: optuna.trial.BaseTrial, space: dict[str, ParamSpace]) -> dict[str, object]:
    values = {}
    for key, spec in space.items():
        if spec.type == "int":
            values[key] = trial.suggest_int(key, int(spec.low), int(spec.high), log=spec.log)
        elif spec.type == "float":
            values[key] = trial.suggest_float(key, spec.low, spec.high, log=spec.log)
        else:
            values[key] = trial.suggest_categorical(key, list(spec.choices))
    return values


def as_overrides(params: dict[str, object]) -> list[str]:
    return [f"{key}={json.dumps(value)}" for key, value in params.items()]


# user attribute of a trial started after the study was already full (see sweep_trials.py)
SURPLUS = "surplus"


def is_surplus(trial: optuna.trial.FrozenTrial) -> bool:
    return bool(trial.user_attrs.get(SURPLUS))


def finished_or_running(study: optuna.Study) -> int:
    states = (*FINISHED, optuna.trial.TrialState.RUNNING)
    return len(study.get_trials(deepcopy=False, states=states))


def pick_trial(study: optuna.Study, config: SweepConfig) -> optuna.trial.FrozenTrial:
    """The best trial, or for several objectives the Pareto trial with the best weighted, normalised score."""
    if len(config.objectives) == 1:
        return study.best_trial
    front = study.best_trials
    weights = config.trade_off or (1.0,) * len(config.objectives)
    signs = [1 if o.direction == "maximize" else -1 for o in config.objectives]

    def normalised(trial, i):
        values = [t.values[i] * signs[i] for t in front]
        low, high = min(values), max(values)
        return 0.0 if high == low else (trial.values[i] * signs[i] - low) / (high - low)

    return max(front, key=lambda t: (sum(w * normalised(t, i) for i, w in enumerate(weights)), -t.number))


def write_best_params(study: optuna.Study, config: SweepConfig, out: str | Path) -> tuple[Path, int]:
    """A complete params file (the base files merged, the trial's values applied) for `pretrain-eval`."""
    trial = pick_trial(study, config)
    # the run config's own merge; the swept method's recipe is resolved into the file, so the trial's values
    # stay the last word
    overrides = [*config.base_overrides, *as_overrides(trial.params)]
    merged = merged_params(list(config.base_params), overrides)
    validate(RunConfig, merged, str(out)).method_settings()  # the method's own settings checked too
    values = ", ".join(f"{o.metric} = {v:.2f}" for o, v in zip(config.objectives, trial.values, strict=True))
    header = (f"# Best trial {trial.number} of study {config.study!r} ({safe_url(config.storage)}): "
              f"{values}.\n"
              f"# Written by the sweep from {', '.join(config.base_params)} with: "
              f"{' '.join(overrides)}\n")
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    tmp.write_text(header + yaml.safe_dump(merged, sort_keys=False))
    tmp.replace(out)
    return out, trial.number
