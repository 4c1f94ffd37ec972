"""Start and stop the dashboard as a detached local service (the main job leaves it up for browsing).

    python -m dashboard.serve start [--port 8501] [--root .services]   # waits until it answers
    python -m dashboard.serve stop [--root .services]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# A dashboard should say "MLflow is down" in seconds, not after MLflow's default minutes of retries.
QUICK_FAILURE = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1", "MLFLOW_HTTP_REQUEST_TIMEOUT": "10"}
_HTTP = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback: never through a proxy


def command(port: int) -> list[str]:
    # `-m streamlit` from the repo root puts the repo on sys.path (flair_core, dashboard, flows)
    return [sys.executable, "-m", "streamlit", "run", str(REPO / "dashboard" / "app.py"), "--server.headless",
            "true", "--server.address", "127.0.0.1", "--server.port", str(port), "--browser.gatherUsageStats",
            "false", "--server.fileWatcherType", "none"]


def start(port: int, log_path: Path, env: dict | None = None, timeout: float = 60) -> subprocess.Popen:
    """The dashboard in its own session on 127.0.0.1:`port`; returns once its health check answers."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log:
        process = subprocess.Popen(command(port), cwd=REPO, env={**QUICK_FAILURE, **(env or os.environ)}, stdin=subprocess.DEVNULL, stdout=log,
                                   stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + timeout
    while True:
        with contextlib.suppress(OSError), _HTTP.open(f"http://127.0.0.1:{port}/_stcore/health", timeout=2) as reply:
            if reply.status == 200:
                return process
        if process.poll() is not None or time.monotonic() > deadline:
            stop(process.pid)
            raise RuntimeError(f"the dashboard did not come up on 127.0.0.1:{port}; see {log_path}")
        time.sleep(0.3)


def stop(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGTERM)
        for _ in range(50):
            os.killpg(pid, 0)
            time.sleep(0.1)
        os.killpg(pid, signal.SIGKILL)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dashboard.serve", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("action", choices=["start", "stop"])
    parser.add_argument("--port", type=int, default=8501)
    parser.add_argument("--root", default=".services", help="where the pid file and the log go")
    args = parser.parse_args(argv)
    state = Path(args.root) / "dashboard.json"
    if state.is_file():  # one dashboard per root: a start replaces the previous one
        stop(json.loads(state.read_text())["pid"])
        state.unlink()
    if args.action == "start":
        try:
            process = start(args.port, Path(args.root) / "logs" / "dashboard.log", dict(os.environ))
        except RuntimeError as err:
            print(f"dashboard: error: {err}", file=sys.stderr)
            return 2
        state.write_text(json.dumps({"pid": process.pid, "port": args.port}))
        print(f"dashboard up: http://127.0.0.1:{args.port}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
