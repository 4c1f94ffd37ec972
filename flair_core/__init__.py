"""flair_core: FLAIR and its CLIP-family baselines on shared open_clip towers.

A library: it knows nothing of the orchestrators, trackers or UIs that drive it. Its public face: models
(`create_model`, `load_trained`), methods (`METHODS`, `get_method`, `register`) and inference
(`score_pairs`, `rank_images`, `embed_images`, `embed_texts`, `score_matrix`).

It only re-exports: the code lives in modules below it, so no module imports the package for a name (the
floors: tests/test_floors.py).
"""

from __future__ import annotations

from flair_core.inference import (
    embed_images,
    embed_texts,
    rank_images,
    score_matrix,
    score_pairs,
)
from flair_core.methods import METHODS, Method, get_method, method_of, register
from flair_core.model_config import ConfigError, ModelConfig, builtin_model_names, load_model_config
from flair_core.models import create_model, load_trained
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
