import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    if not SHARED.is_dir():
        pytest.fail(f"shared material not found at {SHARED} (expected beside the repository)")
    return SHARED


@pytest.fixture(scope="session")
def reference_fixture(shared_dir) -> Path:
    """The parity fixture folder: $FLAIR_REFERENCE_FIXTURE, else the shared tiny_flair one."""
    return Path(os.environ.get("FLAIR_REFERENCE_FIXTURE", shared_dir / "reference" / "fixtures" / "tiny_flair"))
