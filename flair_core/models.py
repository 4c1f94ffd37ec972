"""Models: a method's model built from an architecture config (`create_model`), and a trained one loaded from
a run folder, a training checkpoint or a weights file (`load_trained`)."""

from __future__ import annotations

import logging
from pathlib import Path

from pydantic import BaseModel
from torch import nn

from flair_core import checkpoints
from flair_core.methods import get_method
from flair_core.model_config import ModelConfig, load_model_config
from flair_core.weights import CheckpointError, load_checked, load_weights

log = logging.getLogger(__name__)


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


def load_trained(path: str | Path, model: str | None = None, method: str = "flair"):
    """A trained model from a run folder (its newest checkpoint), a training checkpoint (which records its
    architecture and method), or any weights file with `model` naming the architecture and `method` its
    method. Returns the model in eval mode; `model.method_name` names its method."""
    path = Path(path)
    if path.is_dir():
        folder = path / "checkpoints" if (path / "checkpoints").is_dir() else path
        found, state, skipped = checkpoints.newest_readable(folder)
        for reason in skipped:
            log.warning("skipped a checkpoint: %s", reason)
        if found is None and skipped:
            raise CheckpointError(f"{path}: no readable checkpoint ({len(skipped)} skipped, newest: "
                                  f"{skipped[0]})")
        if found is None:
            raise CheckpointError(f"{path}: no complete checkpoint found")
        path = found
    else:
        state = None
    if model is not None:
        return load_weights(create_model(load_model_config(model), method), path).eval()
    state = state if state is not None else checkpoints.load(path)  # a run folder's was loaded once above
    if "model_config" not in state or "method" not in state:
        raise CheckpointError(f"{path}: does not record its architecture; pass the model config name")
    spec = get_method(state["method"])
    settings = spec.settings(**state.get("method_settings", {}))
    net = create_model(ModelConfig.model_validate(state["model_config"]), state["method"], settings=settings)
    return load_checked(net, state["model"], str(path)).eval()
