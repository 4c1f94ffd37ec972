"""What makes a method: its settings, its model (shared towers + its head), its loss, and how it is scored.

Each method module ends with one `METHOD = Method(...)`; `flair_core.methods` registers them. Everything that
lists methods or asks what a method offers (training, evaluation, the CLI, flows, DVC, the dashboard, tests)
reads the registry, so adding a method is its module plus one registry line.
"""

from __future__ import annotations

from dataclasses import dataclass

from pydantic import BaseModel
from torch import nn


@dataclass(frozen=True)
class Method:
    name: str
    settings: type[BaseModel]
    model: type[nn.Module]
    loss: type[nn.Module]
    retrieval_modes: tuple[str, ...] = ("global",)  # scoring modes its model offers, its own mode first
    segmentation_modes: tuple[str, ...] = ("patch",)
    summary: str = ""  # one line for `flair methods` and `flair train --help`
    # False for the method under study (FLAIR): `flair compare` holds it to its own mode where baselines are
    # shown in their best one, and the dashboard and reports set it against the baselines.
    baseline: bool = True

    def __post_init__(self) -> None:
        if not self.retrieval_modes or not self.segmentation_modes:
            raise ValueError(f"method {self.name!r}: needs at least one retrieval and one segmentation mode")

    @property
    def primary_mode(self) -> str:
        """The method's own retrieval mode: the one it is reported, validated and promoted in."""
        return self.retrieval_modes[0]
