"""flair_core: FLAIR and its CLIP-family baselines on shared open_clip towers.

A library: it knows nothing of the orchestrators, trackers or UIs that drive it. Its public face: models
(`create_model`, `load_trained`), methods (`METHODS`, `get_method`, `register`) and inference
(`score_pairs`, `rank_images`, `embed_images`, `embed_texts`, `score_matrix`).

It only re-exports: the code lives in modules below it, so no module imports the package for a name (the
floors: tests/test_floors.py).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

# Each name is imported on first use: importing one module of the package (`flair_core.lifetime`, which the
# process launcher of every flow task runs before it execs its command) must not cost torch and open_clip's
# ~4 CPU-seconds of imports.
_EXPORTS = {
    "embed_images": "inference", "embed_texts": "inference", "rank_images": "inference",
    "score_matrix": "inference", "score_pairs": "inference",
    "METHODS": "methods", "Method": "methods", "get_method": "methods", "method_of": "methods",
    "register": "methods",
    "ConfigError": "model_config", "ModelConfig": "model_config", "builtin_model_names": "model_config",
    "load_model_config": "model_config",
    "create_model": "models", "load_trained": "models",
    "get_tokenizer": "preprocess", "get_transform": "preprocess",
    "CheckpointError": "weights", "load_weights": "weights", "read_state_dict": "weights",
}

if TYPE_CHECKING:  # what the names are, for readers and type checkers
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


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'flair_core' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"flair_core.{_EXPORTS[name]}"), name)
    globals()[name] = value  # the next lookup finds it without this function
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_EXPORTS})


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
