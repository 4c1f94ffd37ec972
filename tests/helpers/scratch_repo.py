"""A scratch copy of the repo on the tiny preset with the services up and deployments served: what the flow
tests run against (a real Prefect server, MLflow server and S3 store on free loopback ports)."""

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from unittest import mock

from tests.helpers.paths import BIN, REPO
from tests.test_services import service_ports

PY = sys.executable


def tiny_preset(repo: Path) -> None:
    """Make the copy's params/cpu.yaml the tiny preset: params/pipeline.yaml merged over it, section by
    section, as `flair train --params params/cpu.yaml --params params/pipeline.yaml` reads them. The flows
    take one params file (pretrain-eval's `params_file`, default params/cpu.yaml; its `dvc repro prepare`), so
    the merge is written in place here; the DVC pipeline test passes the override file instead."""
    import yaml

    from flair_core.run_config import merge_sections, read_yaml

    params = repo / "params" / "cpu.yaml"
    merged = merge_sections(read_yaml(params), read_yaml(repo / "params" / "pipeline.yaml"))
    params.write_text("# params/cpu.yaml with params/pipeline.yaml over it (tests/helpers/scratch_repo.py)\n"
                      + yaml.safe_dump(merged, sort_keys=False))


def scratch_copy(folder: Path) -> Path:
    """The repo's sources (no outputs, no venv) in `folder/repo`, on the tiny preset, committed to a fresh
    git."""
    repo = folder / "repo"
    # outputs, not sources
    top_level = {".venv", ".git", "runs", "data", "eval", "reports", ".services", "sweeps"}
    shutil.copytree(REPO, repo, ignore=lambda parent, names: [
        n for n in names if (Path(parent) == REPO and n in top_level) or n == "__pycache__"
        or n.endswith(".egg-info")])
    tiny_preset(repo)
    for command in (["git", "init", "-q"], ["git", "add", "-A"],
                    ["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "scratch"]):
        subprocess.run(command, cwd=repo, check=True)
    return repo


@contextlib.contextmanager
def scratch_platform(folder: Path, deployments: dict[str, str], db: str = "sqlite", **settings):
    """`deployments`: flow module -> deployment name (e.g. {"flows.pretrain_eval": "pretrain-eval/test"}).
    With db="postgres", MLflow's store and the sweeps' Optuna storage are a real PostgreSQL server; `settings`
    go to LocalServices (auth="on": team mode; bind=ADDRESS). Yields (repo, env); the MLflow/S3 client
    settings are also in os.environ meanwhile."""
    from services.stack import LocalServices
    from tests.helpers.processes import free_port

    repo = scratch_copy(folder)
    postgres = {}
    if db == "postgres":  # under root the server runs as `postgres`, which cannot enter pytest's 0700 folders
        cluster = Path(tempfile.mkdtemp(prefix="flair-pg-"))
        cluster.chmod(0o755)
        postgres = {"db": "postgres", "postgres_port": free_port(), "postgres_dir": cluster}
    services = LocalServices(root=repo / ".services", **service_ports(), **postgres, **settings)
    services.start()
    env = {**os.environ, **services.client_env(), "PATH": f"{BIN}:{os.environ['PATH']}"}
    log = open(repo / ".services" / "serve.log", "w")  # noqa: SIM115 - open for the serve processes' lifetime
    # Each in a session of its own: its flow runs' processes stay in its group, and go with it (below).
    served = [subprocess.Popen([PY, "-m", module, "serve", "--name", name.split("/")[1]], cwd=repo, env=env,
                               stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
              for module, name in deployments.items()]
    try:
        deadline = time.time() + 120
        for name in deployments.values():
            while subprocess.run([BIN / "prefect", "deployment", "inspect", name], env=env,
                                 capture_output=True, check=False).returncode != 0:
                assert all(p.poll() is None for p in served) and time.time() < deadline, \
                    (repo / ".services" / "serve.log").read_text()
                time.sleep(1)
        clients = {k: v for k, v in env.items() if k.startswith(("MLFLOW", "AWS"))}
        with mock.patch.dict(os.environ, clients):
            yield repo, env
    finally:
        for process in served:  # before the server, or its shutdown hangs
            process.terminate()
        for process in served:
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:  # a runner waiting for a flow run still going: the services
                os.killpg(process.pid, signal.SIGKILL)  # must stop all the same, and nothing may stay behind
                process.wait()
        log.close()
        services.stop()
        if postgres:
            shutil.rmtree(postgres["postgres_dir"], ignore_errors=True)


def postgres_connection(repo: Path, database: str):
    """A psycopg2 connection to a database of the scratch platform's PostgreSQL (`mlflow` or `optuna`)."""
    import psycopg2

    port = json.loads((repo / ".services" / "state.json").read_text())["ports"]["postgres"]
    password = json.loads((repo / ".services" / "postgres.json").read_text())["password"]
    return psycopg2.connect(host="127.0.0.1", port=port, user="flair", password=password, dbname=database)


def deployment_run(env: dict, name: str, *params: str, timeout: int = 900) -> subprocess.CompletedProcess:
    command = [BIN / "prefect", "deployment", "run", name, "--watch"]
    for p in params:
        command += ["-p", p]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout, check=False)
