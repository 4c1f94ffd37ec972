"""Model configuration: open_clip-style JSON, validated once with pydantic.

The JSON layout is the one the original FLAIR code and open_clip use (`embed_dim`, `init_logit_bias`,
`vision_cfg`, `text_cfg`), so a config file written for either can be read here unchanged.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from importlib import resources
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator


class Frozen(BaseModel):
    """The base of every configuration and settings model: immutable once validated, unknown keys refused, no
    number that is not finite (an `lr: inf` would train on and write Infinity into the run's metrics)."""

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)


class VisionConfig(Frozen):
    image_size: int = Field(224, gt=0)
    patch_size: int = Field(16, gt=0)
    width: int = Field(768, gt=0)
    layers: int = Field(12, gt=0)
    head_width: int = Field(64, gt=0)
    mlp_ratio: float = Field(4.0, gt=0)
    # Accepted for compatibility with the original JSON; the towers always return tokens.
    output_tokens: bool = True

    @model_validator(mode="after")
    def _divisible(self) -> VisionConfig:
        if self.image_size % self.patch_size:
            raise ValueError(
                f"image_size {self.image_size} is not a multiple of patch_size {self.patch_size}")
        if self.width % self.head_width:
            raise ValueError(f"width {self.width} is not a multiple of head_width {self.head_width}")
        return self

    @property
    def num_patches(self) -> int:
        return (self.image_size // self.patch_size) ** 2


class TextConfig(Frozen):
    context_length: int = Field(77, gt=1)
    vocab_size: int = Field(49408, gt=0)
    width: int = Field(512, gt=0)
    heads: int = Field(8, gt=0)
    layers: int = Field(12, gt=0)
    mlp_ratio: float = Field(4.0, gt=0)

    @model_validator(mode="after")
    def _divisible(self) -> TextConfig:
        if self.width % self.heads:
            raise ValueError(f"width {self.width} is not a multiple of heads {self.heads}")
        return self


class ModelConfig(Frozen):
    embed_dim: int = Field(512, gt=0)
    init_logit_scale: float = math.log(1 / 0.07)
    init_logit_bias: float | None = -10.0
    quick_gelu: bool = False
    vision_cfg: VisionConfig = VisionConfig()
    text_cfg: TextConfig = TextConfig()


class ConfigError(ValueError):
    """A configuration that cannot be used; the message is one line naming the key."""


def one_line_validation_error(err: ValidationError, source: str, prefix: str = "",
                              overrides: Sequence[str] = ()) -> str:
    """Render pydantic's errors as `source: key.path: message; ...` on one line; an error in a key that an
    override (`section.key=value`) set names that override as its source instead of the file."""
    parts, from_file = [], False
    for e in err.errors():
        path = ".".join(str(p) for p in (prefix, *e["loc"]) if p != "")
        message = e["msg"].removeprefix("Value error, ")
        keys = [(o, o.partition("=")[0]) for o in reversed(overrides)]
        given = next((o for o, key in keys if path and (path == key or path.startswith(key + "."))), None)
        from_file = from_file or given is None
        text = f"{path}: {message}" if path else message
        parts.append(f"--set {given}: {text}" if given else text)
    return (f"{source}: " if from_file else "") + "; ".join(parts)


def builtin_model_names() -> list[str]:
    folder = resources.files("flair_core") / "model_configs"
    return sorted(p.name.removesuffix(".json") for p in folder.iterdir() if p.name.endswith(".json"))


def load_model_config(name_or_path: str | Path) -> ModelConfig:
    """A built-in config by name (see `builtin_model_names()`) or a JSON file by path."""
    path = Path(name_or_path)
    if path.suffix != ".json":
        candidate = resources.files("flair_core") / "model_configs" / f"{name_or_path}.json"
        if not candidate.is_file():
            known = ", ".join(builtin_model_names())
            raise ConfigError(f"unknown model config {str(name_or_path)!r} (built-in: {known}; or a .json "
                              "path)")
        text = candidate.read_text()
    elif path.is_file():
        text = path.read_text()
    else:
        raise ConfigError(f"model config file not found: {path}")
    try:
        return ModelConfig.model_validate(json.loads(text))
    except json.JSONDecodeError as err:
        raise ConfigError(f"{name_or_path}: not valid JSON ({err})") from None
    except ValidationError as err:
        raise ConfigError(one_line_validation_error(err, str(name_or_path))) from None
