"""AdamW parameter groups and the warm-up + cosine schedule (FLAIR_SPEC §4.6)."""

from __future__ import annotations

import math

import torch
from torch import nn

SCALARS = ("logit_scale", "logit_bias")


def param_groups(model: nn.Module, lr: float, weight_decay: float, scalar_lr: float | None) -> list[dict]:
    """Decay for matrices; none for norms, biases, embeddings' 1-D vectors; scalars in their own group.

    At CPU scale the temperature and bias barely move with the towers' lr: `scalar_lr` lets them.
    """
    decay, no_decay, scalars = [], [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if name in SCALARS:
            scalars.append(p)
        elif p.ndim < 2 or any(tag in name for tag in ("bn", "ln", "bias")):
            no_decay.append(p)
        else:
            decay.append(p)
    groups = [
        {"params": decay, "weight_decay": weight_decay, "lr": lr, "name": "decay"},
        {"params": no_decay, "weight_decay": 0.0, "lr": lr, "name": "no_decay"},
        {"params": scalars, "weight_decay": 0.0, "lr": scalar_lr or lr, "name": "scalars"},
    ]
    return [g for g in groups if g["params"]]


def warmup_cosine(warmup_steps: int, total_steps: int):
    """Multiplier of the base lr: linear warm-up to 1, then cosine to 0 at `total_steps`."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    return factor


def clamp_logit_scale(model: nn.Module, max_scale: float = math.log(100)) -> None:
    scale = getattr(model, "logit_scale", None)
    if scale is not None:
        with torch.no_grad():
            scale.clamp_(0, max_scale)
