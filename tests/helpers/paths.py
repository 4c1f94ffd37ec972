"""Where the tests find things, defined once. Constants rather than fixtures: module-level parametrize lists,
helpers and conftest hooks read them at collection time."""

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SHARED = REPO.parent / "shared"  # the reference material lives beside the checkout, not in it
# The venv's console scripts (dvc, flair, prefect, mlflow): subprocesses find them here whether or not the
# venv is activated.
BIN = Path(sys.executable).parent
ARTIFACTS = REPO / "test-artifacts"  # timings, screenshots and logs kept after a run (git-ignored)
