"""flair_core: FLAIR and its CLIP-family baselines on shared open_clip towers.

A library: it knows nothing of the orchestrators, trackers or UIs that drive it. Its public face: models
(`create_model`, `load_trained`), methods (`METHODS`, `get_method`, `register`) and inference
(`score_pairs`, `rank_images`, `embed_images`, `embed_texts`, `score_matrix`).
"""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel
from torch import nn

from flair_core.inference import (
    embed_images,
    embed_texts,
    load_trained,
    rank_images,
    score_matrix,
    score_pairs,
)
from flair_core.methods import METHODS, Method, get_method, method_of, register
from flair_core.model_config import ConfigError, ModelConfig, builtin_model_names, load_model_config
from flair_core.preprocess import get_tokenizer, get_transform
from flair_core.weights import CheckpointError, load_weights, read_state_dict

__all__ = [
    "METHODS",
    "CheckpointError",
    "ConfigError",
    "Method",
    "ModelConfig",
    "builtin_model_names",
    "create_model",
    "embed_images",
    "embed_texts",
    "get_method",
    "get_tokenizer",
    "get_transform",
    "load_model_config",
    "load_trained",
    "load_weights",
    "method_of",
    "rank_images",
    "read_state_dict",
    "register",
    "score_matrix",
    "score_pairs",
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
    net.method_name = spec.name  # scoring and evaluation ask the model which method it is
    if pretrained is not None:
        load_weights(net, pretrained)
    return net
