"""Params files: YAML sections validated by the library's config models, with `key=value` overrides.

Errors are one line naming the file and the key path, e.g. `params/data.yaml: data.k: Input should be
greater than or equal to 1`.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from flair_core.config import ConfigError, one_line_validation_error

M = TypeVar("M", bound=BaseModel)


def read_yaml(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"params file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text()) or {}
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


def validate(model: type[M], data: dict, source: str, prefix: str = "") -> M:
    try:
        return model.model_validate(data)
    except ValidationError as err:
        raise ConfigError(one_line_validation_error(err, source, prefix)) from None


def load_section(model: type[M], section: str, paths: str | Path | Sequence[str | Path] | None,
                 overrides: list[str] = ()) -> M:
    """The `section` of one or more params files, merged key by key (later wins; no file = defaults), then
    overridden by `section.key=value` items."""
    paths = [paths] if isinstance(paths, str | Path) else list(paths or [])
    merged: dict = {}
    for path in paths:
        values = read_yaml(path).get(section) or {}
        mapping = isinstance(values, dict) and isinstance(merged, dict)
        merged = {**merged, **values} if mapping else values  # not a mapping: `validate` names it
    data = apply_overrides({section: merged}, [o if o.startswith(f"{section}.") else f"{section}.{o}" for o in overrides])
    return validate(model, data.get(section) or {}, ", ".join(map(str, paths)) or "params", prefix=section)
