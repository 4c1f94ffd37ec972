"""A run on a really full file system (a small tmpfs): the failed write leaves every file whole and says so in
one line; once space is freed, `--resume auto` finishes the run."""

import errno
import json
import subprocess
import sys

import pytest

from flair_core import checkpoints
from flair_core.fileio import WriteError, append_line

pytestmark = pytest.mark.integration


@pytest.fixture
def small_disk(tmp_path):
    """A 96 MB tmpfs: room for the run and two of its ~40 MB checkpoints."""
    folder = tmp_path / "disk"
    folder.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=96m", "tmpfs", str(folder)],
                             capture_output=True, text=True, check=False)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs (needs root): {mounted.stderr.strip()}")
    try:
        yield folder
    finally:
        subprocess.run(["umount", str(folder)], check=True)


def train(data, out, *extra):
    settings = {"train.model": "micro-32", "train.shards": str(data / "train"), "train.batch_size": 8,
                "train.steps_per_epoch": 4, "train.checkpoint_every": 4, "train.keep_checkpoints": 1,
                "loader.workers": 0}
    sets = [x for k, v in settings.items() for x in ("--set", f"{k}={v}")]
    return subprocess.run([sys.executable, "-m", "flair_cli", "train", "--out", str(out), *sets, *extra],
                          capture_output=True, text=True, check=False)


def fill(path, leave: int) -> None:
    """Write `path` until the disk is full, then free `leave` bytes of it."""
    with open(path, "wb", buffering=0) as f:
        block = b"\0" * (1 << 20)
        try:
            while True:
                f.write(block)
        except OSError as err:
            assert err.errno == errno.ENOSPC
        f.truncate(max(f.tell() - leave, 0))


def test_a_full_disk_stops_the_run_cleanly_and_resume_finishes_it(tiny_data, small_disk):
    run = small_disk / "run"
    first = train(tiny_data, run)
    assert first.returncode == 0, first.stderr
    metrics = run / "metrics.jsonl"

    filler = small_disk / "filler"
    fill(filler, leave=0)
    before = metrics.read_bytes()
    with pytest.raises(WriteError, match="No space left on device"):
        append_line(metrics, json.dumps({"step": 5, "note": "x" * 8000}))  # fills its last page, then ENOSPC
    assert metrics.read_bytes() == before

    # room for config.yaml and metrics lines, not for the step-8 checkpoint
    filler.unlink()
    fill(filler, leave=1 << 20)
    full = train(tiny_data, run, "--resume", "auto", "--set", "train.epochs=2")
    assert full.returncode == 2, full.stderr
    assert "Traceback" not in full.stderr
    error = full.stderr.splitlines()[-1]
    assert error == (f"flair train: error: writing {run}/checkpoints/step-00000008.pt: No space left on "
                     "device; earlier checkpoints and metrics are intact: free space and resume with "
                     "--resume auto")
    assert sum("No space left" in line for line in full.stderr.splitlines()) == 1
    assert checkpoints.load(run / "checkpoints" / "step-00000004.pt")["step"] == 4
    assert [json.loads(line)["step"] for line in metrics.read_text().splitlines()] == list(range(1, 9))
    assert list(small_disk.rglob(".*.tmp*")) == []

    filler.unlink()
    resumed = train(tiny_data, run, "--resume", "auto", "--set", "train.epochs=2")
    assert resumed.returncode == 0, resumed.stderr
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step-00000008.pt",
                                                                      "step-00000008.pt.sha256"]
    assert checkpoints.load(run / "checkpoints" / "step-00000008.pt")["step"] == 8
    assert [json.loads(line)["step"] for line in metrics.read_text().splitlines()] == list(range(1, 9))
