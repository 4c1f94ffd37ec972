"""Training checkpoints: written atomically (temp file + rename), newest N kept, resumable exactly.

A checkpoint holds the model, optimizer, scheduler, scaler and loss state, the step counters and every RNG
state, and loads with `weights_only=True`. Only complete files ever carry the `step-*.pt` name, so a run
killed while writing leaves at most a stray temp file, never a checkpoint that resume would pick; a full disk
leaves not even that. Each carries its SHA-256 beside it (`step-*.pt.sha256`), checked on load, so a file
changed after it was written (a bad disk, a partial copy) is refused rather than trained on; `newest_readable`
then falls back to the previous one and says why.
"""

from __future__ import annotations

import hashlib
import random
from pathlib import Path

import torch

from flair_core.fileio import write_atomic
from flair_core.weights import CheckpointError, torch_load

PATTERN = "step-*.pt"
CHECKSUM = ".sha256"  # the suffix of a checkpoint's checksum file


def checkpoint_path(folder: Path, step: int) -> Path:
    return folder / f"step-{step:08d}.pt"


def save(folder: Path, step: int, state: dict, keep: int) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    final = checkpoint_path(folder, step)
    write_atomic(final, lambda f: torch.save(state, f))
    # After the checkpoint: a crash in between leaves a complete checkpoint without its checksum, which loads
    # as one written before checksums were kept (never a checksum naming a file that does not exist).
    write_atomic(checksum_path(final), f"{sha256(final)}  {final.name}\n")
    for old in sorted(folder.glob(PATTERN))[:-keep]:
        old.unlink()
        checksum_path(old).unlink(missing_ok=True)
    return final


def checksum_path(path: Path) -> Path:
    return path.with_name(path.name + CHECKSUM)


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def step_of(path: Path) -> int:
    """The step a checkpoint file was written at (its name: step-00000256.pt)."""
    return int(path.stem.split("-")[1])


def newest(folder: Path) -> Path | None:
    found = sorted(folder.glob(PATTERN)) if folder.is_dir() else []
    return found[-1] if found else None


def verify(path: Path) -> None:
    """Raise CheckpointError if the checkpoint's recorded SHA-256 does not match its bytes (no record: the
    checkpoint predates checksums, or its writer died before recording one; torch's own checks then apply)."""
    recorded = checksum_path(path)
    if not recorded.is_file():
        return
    expected = (recorded.read_text().split() or [""])[0]
    if sha256(path) != expected:
        raise CheckpointError(f"{path}: checksum mismatch: the file changed after it was written (expected "
                              f"sha256 {expected[:12]}…, as recorded in {recorded.name})")


def newest_readable(folder: Path) -> tuple[Path | None, dict | None, list[str]]:
    """The newest checkpoint that verifies and loads, its state (loaded once), and one line per newer one
    skipped (file and why)."""
    skipped = []
    for path in sorted(folder.glob(PATTERN), reverse=True) if folder.is_dir() else []:
        try:
            return path, load(path), skipped
        except CheckpointError as err:
            skipped.append(str(err))
    return None, None, skipped


def load(path: Path) -> dict:
    verify(path)
    state = torch_load(path)
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
