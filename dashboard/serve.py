"""Start and stop the dashboard as a detached local service (the main job leaves it up for browsing).

    python -m dashboard.serve start [--port 8501] [--root .services]   # waits until it answers
    python -m dashboard.serve stop [--root .services]
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from services import supervisor
from services.supervisor import HOST, ServiceError

REPO = Path(__file__).resolve().parents[1]
LABEL = "Dashboard"
# A dashboard should say "MLflow is down" in seconds, not after MLflow's default minutes of retries.
QUICK_FAILURE = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1", "MLFLOW_HTTP_REQUEST_TIMEOUT": "10"}


def command(port: int) -> list[str]:
    # `-m streamlit` from the repo root puts the repo on sys.path (flair_core, flair_lab, dashboard, flows,
    # services)
    return [sys.executable, "-m", "streamlit", "run", str(REPO / "dashboard" / "app.py"), "--server.headless",
            "true", "--server.address", HOST, "--server.port", str(port), "--browser.gatherUsageStats",
            "false", "--server.fileWatcherType", "none"]


def start(port: int, log: Path, env: dict | None = None, timeout: float = 60) -> dict:
    """The dashboard on 127.0.0.1:`port`, once it answers; `supervisor.terminate` the record to stop it."""
    proc = supervisor.spawn(command(port), log, {**(env or os.environ), **QUICK_FAILURE}, cwd=REPO)
    try:
        supervisor.wait_until(lambda: supervisor.answers(f"http://{HOST}:{port}/_stcore/health"), proc, LABEL,
                              log, timeout)
    except BaseException:
        supervisor.terminate(proc, LABEL)
        raise
    return proc


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dashboard.serve", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("action", choices=["start", "stop"])
    parser.add_argument("--port", type=int, default=8501)
    parser.add_argument("--root", default=".services", help="where the state file and the log go")
    args = parser.parse_args(argv)
    state = Path(args.root) / "dashboard.json"
    try:
        if state.is_file():  # one dashboard per root: a start replaces the previous one
            supervisor.terminate(supervisor.load(state), LABEL)
            state.unlink()
        if args.action == "start":
            proc = start(args.port, Path(args.root) / "logs" / "dashboard.log", dict(os.environ))
            supervisor.save(state, **proc, port=args.port)
            print(f"dashboard up: http://{HOST}:{args.port}")
    except ServiceError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
