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


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> Path:
    """A small built-in data set at 32 px (the micro-32 preset), generated once per test session."""
    from flair_core.data.builtin import BuiltinDataConfig, generate

    out = tmp_path_factory.mktemp("tiny_data") / "builtin"
    generate(BuiltinDataConfig(image_size=32, train_images=512, val_images=64, test_images=64,
                               classification_images=60, shard_size=128), out)
    return out
