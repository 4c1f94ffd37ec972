import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from flair_cli.processes import alive as running
from tests.helpers.paths import ARTIFACTS, REPO, SHARED
from tests.helpers.podman import podman_problem

# Parallel workers (`make test`) share the cores: each runs its trainings (in-process and in the processes it
# starts) on its share of them. Two 2-thread OpenMP processes on 2 cores spin against each other and ran a
# test training 7x slower than alone.
if os.environ.get("PYTEST_XDIST_WORKER_COUNT"):
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1)
                                                      // int(os.environ["PYTEST_XDIST_WORKER_COUNT"]))))

IMAGE_BUILD_PID = ARTIFACTS / "image_build.pid"
_IMAGE_BUILD: list[subprocess.Popen] = []  # the build this process started


@pytest.hookimpl(trylast=True)  # after -m and -k have deselected
def pytest_collection_modifyitems(config, items):
    """Slow files first: `make test` hands whole files to two workers in collection order
    (--no-loadscope-reorder), and a one-minute file left for last keeps one worker busy while the other idles.
    Integration files (services, trainings: 30-150 s each) go first, the container file after them (its image
    builds meanwhile), unit files (seconds) fill the end.

    When container tests are selected, build the platform image in the background from the start: on a
    fresh machine it takes ~5 min, which then overlaps the tests before them. Their fixture's own build call
    waits for this one (infra/containers.sh builds one at a time) and finds the image. With parallel workers
    every worker collects every test: the first one starts the build."""
    items.sort(key=lambda item: 1 if item.get_closest_marker("containers")
               else 0 if item.get_closest_marker("integration") else 2)  # stable: files stay whole, in order
    if getattr(config, "workerinput", {}).get("workerid", "gw0") != "gw0":
        return
    if not any(item.get_closest_marker("containers") for item in items) or podman_problem():
        return
    IMAGE_BUILD_PID.parent.mkdir(exist_ok=True)
    with (IMAGE_BUILD_PID.parent / "image_build.log").open("w") as out:
        build = subprocess.Popen([REPO / "infra" / "containers.sh", "build"], stdout=out,
                                 stderr=subprocess.STDOUT, start_new_session=True)
    _IMAGE_BUILD.append(build)
    IMAGE_BUILD_PID.write_text(str(build.pid))


def pytest_configure(config):
    if "OMP_NUM_THREADS" in os.environ and "torch" in sys.modules:  # imported before the variable was set
        sys.modules["torch"].set_num_threads(int(os.environ["OMP_NUM_THREADS"]))


def pytest_sessionfinish(session, exitstatus):
    """A session cut short (e.g. -x) does not leave a build behind. Under xdist this is the controller's end,
    after every worker's: a worker that finished early must not stop a build another worker still waits
    for."""
    if hasattr(session.config, "workerinput"):
        if _IMAGE_BUILD:
            _IMAGE_BUILD[0].poll()  # reap a finished build; a running one stays for the other workers
        return
    if not IMAGE_BUILD_PID.is_file():
        return
    pid = int(IMAGE_BUILD_PID.read_text())
    IMAGE_BUILD_PID.unlink()
    if running(pid):
        os.killpg(pid, signal.SIGTERM)  # the script and the podman build it runs (their own session)
        for _ in range(120):
            if _IMAGE_BUILD:
                _IMAGE_BUILD[0].poll()  # our own child: reap it, or it stays a zombie
            if not running(pid):
                break
            time.sleep(0.5)


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    if not SHARED.is_dir():
        pytest.fail(f"shared material not found at {SHARED} (expected beside the repository)")
    return SHARED


@pytest.fixture(scope="session")
def reference_fixture(shared_dir) -> Path:
    """The parity fixture folder: $FLAIR_REFERENCE_FIXTURE, else the shared tiny_flair one."""
    return Path(os.environ.get("FLAIR_REFERENCE_FIXTURE",
                               shared_dir / "reference" / "fixtures" / "tiny_flair"))


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> Path:
    """A small built-in data set at 32 px (the micro-32 preset), generated once per test session."""
    from flair_core.data.builtin import BuiltinDataConfig, generate

    out = tmp_path_factory.mktemp("tiny_data") / "builtin"
    generate(BuiltinDataConfig(image_size=32, train_images=512, val_images=64, test_images=64,
                               classification_images=60, shard_size=128), out)
    return out
