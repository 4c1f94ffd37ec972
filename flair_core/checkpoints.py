"""Training checkpoints: written atomically (temp file + rename), newest N kept, resumable exactly.

A checkpoint holds the model, optimizer, scheduler, scaler and loss state, the step counters and every RNG
state, and loads with `weights_only=True`. Only complete files ever carry the `step-*.pt` name, so a run
killed while writing leaves at most a stray temp file, never a checkpoint that resume would pick; a full disk
leaves not even that.
"""

from __future__ import annotations

import pickle
import random
from pathlib import Path

import torch

from flair_core.fileio import write_atomic
from flair_core.weights import CheckpointError

PATTERN = "step-*.pt"


def checkpoint_path(folder: Path, step: int) -> Path:
    return folder / f"step-{step:08d}.pt"


def save(folder: Path, step: int, state: dict, keep: int) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    final = checkpoint_path(folder, step)
    write_atomic(final, lambda f: torch.save(state, f))
    for old in sorted(folder.glob(PATTERN))[:-keep]:
        old.unlink()
    return final


def step_of(path: Path) -> int:
    """The step a checkpoint file was written at (its name: step-00000256.pt)."""
    return int(path.stem.split("-")[1])


def newest(folder: Path) -> Path | None:
    found = sorted(folder.glob(PATTERN)) if folder.is_dir() else []
    return found[-1] if found else None


def load(path: Path) -> dict:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError, ValueError) as err:
        raise CheckpointError(
            f"{path}: not a readable training checkpoint ({str(err).splitlines()[0]})") from None
    required = {"model", "optimizer", "scheduler", "step", "epoch", "step_in_epoch", "rng"}
    if not isinstance(state, dict) or not required <= set(state):
        raise CheckpointError(f"{path}: not a training checkpoint (needs {', '.join(sorted(required))})")
    return state


def rng_state() -> dict:
    state = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
