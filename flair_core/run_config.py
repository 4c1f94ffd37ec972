"""Run configuration, in one place: params files (YAML sections, merged left to right, section by section),
per-method recipes, `section.key=value` overrides, validation into frozen pydantic models, and the resolved
config written beside every run.

Errors are one line naming the file and the key path, e.g. `params/cpu.yaml: train.lr: Input should be
greater than 0`. The model architecture's own config (open_clip JSON) is `flair_core.model_config`.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Literal, TypeVar

import yaml
from pydantic import BaseModel, Field, ValidationError, model_validator

from flair_core.data.builtin import BuiltinDataConfig
from flair_core.data.captions import SamplingConfig
from flair_core.data.loader import LoaderConfig
from flair_core.fileio import write_atomic
from flair_core.methods import METHODS
from flair_core.model_config import ConfigError, Frozen, one_line_validation_error

M = TypeVar("M", bound=BaseModel)


def read_yaml(path: str | Path) -> dict:
    path = Path(path)
    if path.is_dir():
        raise ConfigError(f"params file {path} is a folder, not a file")
    if not path.is_file():
        raise ConfigError(f"params file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except UnicodeDecodeError as err:
        raise ConfigError(f"{path}: not UTF-8 text (byte {err.object[err.start]:#04x} at offset {err.start})"
                          ) from None
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML ({str(err).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of sections at the top level")
    return data


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    """`a.b=3` sets data["a"]["b"] = 3 (the value parsed as YAML, so numbers and lists work)."""
    data = yaml.safe_load(yaml.safe_dump(data))  # deep copy
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"override {item!r} is not key=value")
        node = data
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {item!r}: {part} is not a section")
        node[leaf] = yaml.safe_load(raw)
    return data


def validate(model: type[M], data: dict, source: str, prefix: str = "", overrides: Sequence[str] = ()) -> M:
    try:
        return model.model_validate(data)
    except ValidationError as err:
        raise ConfigError(one_line_validation_error(err, source, prefix, overrides)) from None


def load_section(model: type[M], section: str, paths: str | Path | Sequence[str | Path] | None,
                 overrides: list[str] = ()) -> M:
    """The `section` of params files merged as a run's are (`read_params`; no file = defaults), then
    overridden by `key=value` or `section.key=value` items. Recipes are a run's: a section on its own takes
    none."""
    paths = [paths] if isinstance(paths, str | Path) else list(paths or [])
    overrides = [o if o.startswith(f"{section}.") else f"{section}.{o}" for o in overrides]
    values = apply_overrides(read_params(paths), overrides).get(section)
    return validate(model, values or {}, source_of(paths), prefix=section)


class MethodConfig(Frozen):
    name: str = "flair"
    settings: dict = Field(default_factory=dict, description="validated by the method's own settings model")

    @model_validator(mode="after")
    def _known(self) -> MethodConfig:
        if self.name not in METHODS:
            raise ValueError(f"unknown method {self.name!r} (known: {', '.join(sorted(METHODS))})")
        return self


class TrainConfig(Frozen):
    model: str = Field("tiny-64", description="built-in model config name or JSON path")
    shards: str = Field("data/builtin/train", description="folder of .tar shards, or a (brace) URL pattern")
    samples_per_epoch: int | None = Field(None, gt=0, description="None: from the built-in data's meta.json")
    init_from: str | None = Field(None,
                                  description="weights to start from (e.g. a released FLAIR checkpoint)")
    batch_size: int = Field(64, ge=2, description="per rank")
    epochs: int = Field(1, ge=1)
    steps_per_epoch: int | None = Field(None, gt=0, description="None: samples_per_epoch // global batch")
    init_logit_scale: float | None = Field(None, gt=0,
                                           description="initial logit scale s (not log s); None: model "
                                                       "config's")
    init_logit_bias: float | Literal["auto"] | None = Field(
        None, description="initial logit bias; 'auto': the method's constant-logit optimum at this batch and "
                          "K (a sigmoid loss then starts where predicting the base rate is optimal); None: "
                          "model config's")
    lr: float = Field(5e-4, gt=0)
    scalar_lr: float | None = Field(None, gt=0, description="lr of logit scale/bias; None: lr")
    weight_decay: float = Field(0.5, ge=0)
    betas: tuple[float, float] = (0.9, 0.98)
    eps: float = Field(1e-8, gt=0)
    warmup_steps: int = Field(2000, ge=0)
    grad_clip: float | None = Field(None, gt=0)
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"
    accum_freq: int = Field(1, ge=1, description="micro-batches per optimizer step")
    grad_checkpointing: bool = False
    compile: bool = False
    device: Literal["auto", "cpu", "cuda"] = "auto"
    checkpoint_every: int = Field(500, ge=1, description="steps")
    keep_checkpoints: int = Field(2, ge=1)
    log_every: int = Field(10, ge=1)
    validate_every: int | None = Field(None, ge=1,
                                       description="steps between validations; None: no validation")
    validate_on: tuple[str, ...] = Field(
        ("builtin_fine_grained",), min_length=1,
        description="benchmarks scored at each validation, method's own mode")
    validate_split: str = "val"
    validate_root: str | None = Field(None, description="benchmark root; None: the folder holding `shards`")
    seed: int = 0

    @model_validator(mode="after")
    def _divisible(self) -> TrainConfig:
        if self.batch_size % self.accum_freq:
            raise ValueError(f"batch_size {self.batch_size} is not divisible by accum_freq {self.accum_freq}")
        return self


class RunConfig(Frozen):
    data: BuiltinDataConfig = BuiltinDataConfig()
    sampling: SamplingConfig = SamplingConfig()
    loader: LoaderConfig = LoaderConfig()
    method: MethodConfig = MethodConfig()
    train: TrainConfig = TrainConfig()

    def method_settings(self) -> BaseModel:
        return validate(METHODS[self.method.name].settings, self.method.settings, "params", "method.settings")


def merge_sections(data: dict, update: dict) -> dict:
    """Sections of `update` merged into `data`, key by key within a section (later wins)."""
    data = dict(data)
    for section, values in update.items():
        if isinstance(values, dict) and isinstance(data.get(section), dict):
            data[section] = {**data[section], **values}
        else:
            data[section] = values
    return data


def read_merged(sections: Sequence[dict]) -> dict:
    """Params files' contents merged left to right (`merge_sections`)."""
    data: dict = {}
    for update in sections:
        data = merge_sections(data, update)
    return data


def read_params(paths: Sequence[str | Path]) -> dict:
    """Params files merged left to right (`merge_sections`)."""
    return read_merged([read_yaml(path) for path in paths])


def source_of(paths: Sequence[str | Path]) -> str:
    """How errors name the params files."""
    return ", ".join(str(p) for p in paths) or "params"


def _recipes(data: dict, source: str) -> dict:
    """A params file's `recipes:` section, checked."""
    recipes = data.get("recipes") or {}
    if not isinstance(recipes, dict) or not all(isinstance(r, dict) for r in recipes.values()):
        raise ConfigError(f"{source}: recipes: expected a mapping of method name to sections")
    unknown = sorted(set(recipes) - set(METHODS))
    if unknown:
        raise ConfigError(f"{source}: recipes: unknown method {unknown[0]!r} "
                          f"(known: {', '.join(sorted(METHODS))})")
    return recipes


def merged_params(paths: list[str | Path] = (), overrides: list[str] = ()) -> dict:
    """Params files merged left to right (later wins, section by section), each followed by its recipe for
    the chosen method, then `section.key=value` overrides: the plain sections a run is validated from.

    A params file may hold `recipes: {<method>: {<section>: {...}}}`: settings that apply only when that
    method trains (e.g. its learning rate or caption variant), so one file trains every method its own way.
    A recipe beats its own file and the files before it, not the files after it: a smaller preset read after
    the CPU recipe (params/pipeline.yaml) keeps its own step counts and learning rate for every method.
    """
    files = [read_yaml(path) for path in paths]
    recipes = [_recipes(data, str(path)) for data, path in zip(files, paths, strict=True)]
    plain = [{k: v for k, v in data.items() if k != "recipes"} for data in files]
    # The method is chosen by the files and the overrides together (`--set method.name=clip`).
    chosen = apply_overrides(read_merged(plain), list(overrides))
    method = (chosen.get("method") or {}).get("name", MethodConfig().name)
    data: dict = {}
    for sections, recipe in zip(plain, recipes, strict=True):
        data = merge_sections(merge_sections(data, sections), recipe.get(method) or {})
    return apply_overrides(data, list(overrides))


def load_run_config(paths: list[str | Path] = (), overrides: list[str] = ()) -> RunConfig:
    """The validated run configuration of params files and overrides (`merged_params`)."""
    config = validate(RunConfig, merged_params(paths, overrides), source_of(paths), overrides=overrides)
    # method settings are checked now, not at the first step
    validate(METHODS[config.method.name].settings, config.method.settings, source_of(paths),
             "method.settings", overrides)
    return config


RUN_CONFIG_FILE = "config.yaml"  # in a run folder, beside metrics.jsonl and checkpoints/


def dump_run_config(config: RunConfig, path: Path) -> None:
    write_atomic(path, yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False))


def read_run_config(run_dir: str | Path) -> RunConfig:
    """The resolved config a run trained with, as `dump_run_config` wrote it into the run folder."""
    path = Path(run_dir) / RUN_CONFIG_FILE
    if not path.is_file():
        raise ConfigError(f"{run_dir}: no {RUN_CONFIG_FILE} (not a run folder?)")
    return validate(RunConfig, read_yaml(path), str(path))


def require(condition: bool, message: str) -> None:
    if not condition:
        raise ConfigError(message)
