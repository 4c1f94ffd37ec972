"""flair_core: FLAIR and its CLIP-family baselines on shared open_clip towers.

A library: it knows nothing of the orchestrators, trackers or UIs that drive it.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel
from torch import nn

from flair_core.checkpoint import CheckpointError, load_weights, read_state_dict
from flair_core.config import ConfigError, ModelConfig, builtin_model_names, load_model_config
from flair_core.methods import METHODS, get_method
from flair_core.preprocess import get_tokenizer, get_transform

__all__ = [
    "METHODS",
    "CheckpointError",
    "ConfigError",
    "ModelConfig",
    "builtin_model_names",
    "create_model",
    "get_method",
    "get_tokenizer",
    "get_transform",
    "load_model_config",
    "load_weights",
    "read_state_dict",
]


def create_model(
    model: str | Path | ModelConfig = "ViT-B-16-FLAIR",
    method: str = "flair",
    pretrained: str | Path | None = None,
    settings: BaseModel | None = None,
) -> nn.Module:
    """Build a method's model from a config name, JSON path or ModelConfig; optionally load weights.

    `create_model("ViT-B-16-FLAIR", pretrained="flair-cc3m-recap.pt")` loads the authors' released weights.
    """
    config = model if isinstance(model, ModelConfig) else load_model_config(model)
    spec = get_method(method)
    net = spec.model(config, settings or spec.settings())
    if pretrained is not None:
        load_weights(net, pretrained)
    return net
