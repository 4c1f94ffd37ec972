import os
import signal
import subprocess
from pathlib import Path

import pytest

from tests.helpers.podman import podman_problem

REPO = Path(__file__).resolve().parents[1]
_IMAGE_BUILD: list[subprocess.Popen] = []


@pytest.hookimpl(trylast=True)  # after -m and -k have deselected
def pytest_collection_modifyitems(config, items):
    """When container tests are selected, build the platform image in the background from the start: on a
    fresh machine it takes ~5 min, which then overlaps the tests before them. Their fixture's own build call
    waits for this one (infra/containers.sh builds one at a time) and finds the image."""
    if not any(item.get_closest_marker("containers") for item in items) or podman_problem():
        return
    log = REPO / "test-artifacts"
    log.mkdir(exist_ok=True)
    with (log / "image_build.log").open("w") as out:
        _IMAGE_BUILD.append(subprocess.Popen([REPO / "infra" / "containers.sh", "build"], stdout=out,
                                             stderr=subprocess.STDOUT, start_new_session=True))


def pytest_sessionfinish(session, exitstatus):
    for build in _IMAGE_BUILD:  # a session cut short (e.g. -x) does not leave a build behind
        if build.poll() is None:
            os.killpg(build.pid, signal.SIGTERM)  # the script and the podman build it runs
            build.wait(timeout=60)

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
