"""Methods by name. Each method module pairs its settings, its model (shared towers + its head) and its loss.

The loss object also says what the method needs from the data (`views`) and which batch entries its model
takes (`inputs`); its forward turns the model's output dict into named terms that the loop sums.
"""

from __future__ import annotations

from dataclasses import dataclass

from pydantic import BaseModel
from torch import nn

from flair_core.methods import clip, dreamlip, filip, flair


@dataclass(frozen=True)
class Method:
    name: str
    settings: type[BaseModel]
    model: type[nn.Module]
    loss: type[nn.Module]


METHODS: dict[str, Method] = {
    "flair": Method("flair", flair.FlairSettings, flair.FlairModel, flair.FlairLoss),
    "clip": Method("clip", clip.ClipSettings, clip.ClipModel, clip.ClipLoss),
    "filip": Method("filip", filip.FilipSettings, filip.FilipModel, filip.FilipLoss),
    "dreamlip": Method("dreamlip", dreamlip.DreamlipSettings, dreamlip.DreamlipModel, dreamlip.DreamlipLoss),
}


def get_method(name: str) -> Method:
    try:
        return METHODS[name]
    except KeyError:
        raise ValueError(f"unknown method {name!r} (known: {', '.join(sorted(METHODS))})") from None
