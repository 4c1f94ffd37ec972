"""Methods by name. Each method module pairs its settings, its model (shared towers + its head) and its loss."""

from __future__ import annotations

from dataclasses import dataclass

from pydantic import BaseModel
from torch import nn

from flair_core.methods import flair


@dataclass(frozen=True)
class Method:
    name: str
    settings: type[BaseModel]
    model: type[nn.Module]
    loss: type[nn.Module]


METHODS: dict[str, Method] = {
    "flair": Method("flair", flair.FlairSettings, flair.FlairModel, flair.FlairLoss),
}


def get_method(name: str) -> Method:
    try:
        return METHODS[name]
    except KeyError:
        raise ValueError(f"unknown method {name!r} (known: {', '.join(sorted(METHODS))})") from None
