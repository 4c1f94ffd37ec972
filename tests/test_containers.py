"""The platform in containers, as users run it: the image built with podman from infra/docker/Dockerfile, the
stack started from infra/compose.yaml (podman-compose, infra/containers.sh), one pretrain-eval deployment run
by the containerised worker, registered in the containerised MLflow with its artifacts in the containerised S3
store; then the stack stopped and started again with its volumes, and everything still there."""

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from tests.helpers.paths import ARTIFACTS, BIN, REPO
from tests.helpers.podman import podman_problem
from tests.helpers.scratch_repo import scratch_copy

pytestmark = [pytest.mark.integration, pytest.mark.containers]

PORTS = {"s3": 8333, "mlflow": 5000, "prefect": 4200, "dashboard": 8501}  # compose publishes these
TIMINGS: dict[str, float] = {}


def timed(name: str, command: list, env: dict, timeout: float,
          cwd: Path | None = None) -> subprocess.CompletedProcess:
    start = time.perf_counter()
    result = subprocess.run(command, env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout,
                            check=False)
    TIMINGS[name] = round(time.perf_counter() - start, 1)
    ARTIFACTS.mkdir(exist_ok=True)
    (ARTIFACTS / "containers_timings.json").write_text(json.dumps(TIMINGS, indent=1) + "\n")
    assert result.returncode == 0, (f"{' '.join(map(str, command))}:\n{result.stdout[-3000:]}\n"
                                    f"{result.stderr[-3000:]}")
    return result


def taken(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def get(url: str) -> dict:
    return json.loads(urllib.request.urlopen(url, timeout=10).read())


@pytest.fixture(scope="module")
def image() -> str:
    """The platform image of this checkout, built unless one with the same inputs exists
    (infra/containers.sh)."""
    problem = podman_problem()
    if problem:
        pytest.skip(problem)
    env = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}"}
    build = timed("build_seconds", [REPO / "infra" / "containers.sh", "build"], env, timeout=3600)
    return build.stdout.strip().splitlines()[-1]


@pytest.fixture(scope="module")
def stack(image, tmp_path_factory):
    busy = [port for port in PORTS.values() if taken(port)]
    if busy:
        pytest.skip(f"ports {busy} on 127.0.0.1 are taken (the compose stack publishes them): stop `make "
                    "services`")
    env = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}", "PROJECT": "flair-lab-test",
           "FLAIR_IMAGE": image}
    repo = scratch_copy(tmp_path_factory.mktemp("containers"))  # the checkout the workers mount: tiny preset
    script = repo / "infra" / "containers.sh"
    try:
        timed("up_seconds", [script, "up"], env, timeout=900)
        yield repo, env, script
    finally:
        subprocess.run([script, "purge"], env=env, capture_output=True, timeout=300, check=False)


def registry_state() -> tuple[list, list, int]:
    """(champion aliases, runs of the experiment, objects in the MLflow bucket) as the host sees them."""
    import boto3

    model = get(
        f"http://127.0.0.1:{PORTS['mlflow']}/api/2.0/mlflow/registered-models/get?name=flair-lab-flair")
    request = urllib.request.Request(f"http://127.0.0.1:{PORTS['mlflow']}/api/2.0/mlflow/runs/search",
                                     data=json.dumps({"experiment_ids": ["1"]}).encode(),
                                     headers={"Content-Type": "application/json"})
    runs = json.loads(urllib.request.urlopen(request, timeout=10).read()).get("runs", [])
    # a fresh session: boto3's default one keeps the first keys it found, an earlier test's on this worker
    s3 = boto3.session.Session().client("s3", endpoint_url=f"http://127.0.0.1:{PORTS['s3']}",
                                        region_name="us-east-1")
    objects = s3.list_objects_v2(Bucket="mlflow").get("KeyCount", 0)
    return model["registered_model"].get("aliases", []), runs, objects


def flow_runs() -> dict[str, str]:
    """Every flow run the containerised Prefect server knows, with its state."""
    request = urllib.request.Request(f"http://127.0.0.1:{PORTS['prefect']}/api/flow_runs/filter", data=b"{}",
                                     headers={"Content-Type": "application/json"})
    return {r["id"]: r["state_type"] for r in json.loads(urllib.request.urlopen(request, timeout=10).read())}


def test_deployment_runs_in_the_stack_and_survives_a_restart(stack, monkeypatch):
    repo, env, script = stack
    keys = dict(line.split("=", 1) for line in (repo / "infra" / ".env").read_text().split())
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", keys["AWS_ACCESS_KEY_ID"])
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", keys["AWS_SECRET_ACCESS_KEY"])
    client = {**env, "PREFECT_API_URL": f"http://127.0.0.1:{PORTS['prefect']}/api"}
    run = timed("deployment_run_seconds",
                [BIN / "prefect", "deployment", "run", "pretrain-eval/cpu", "--watch", "-p", "method=flair"],
                client, timeout=1200)
    assert "Flow run finished successfully in 'Completed'" in run.stdout
    # the worker trained on the mounted checkout, the tiny preset's model
    assert list((repo / "runs" / "flows").glob("flair-*/checkpoints/step-*.pt"))
    aliases, runs, objects = registry_state()
    assert aliases == [{"alias": "champion", "version": "1"}]
    assert len(runs) == 1 and runs[0]["info"]["status"] == "FINISHED"
    metrics = {m["key"] for m in runs[0]["data"]["metrics"]}
    assert "retrieval/builtin_fine_grained/flair/t2i_r1" in metrics
    assert objects > 0  # the model and its files, proxied by MLflow into the S3 store
    assert urllib.request.urlopen(f"http://127.0.0.1:{PORTS['dashboard']}/_stcore/health",
                                  timeout=10).read() == b"ok"
    runs_before = flow_runs()
    assert list(runs_before.values()) == ["COMPLETED"]

    timed("down_seconds", [script, "down"], env, timeout=300)
    assert not any(taken(port) for port in PORTS.values())
    timed("second_up_seconds", [script, "up"], env, timeout=900)
    assert registry_state() == (aliases, runs, objects)  # nothing lost: versions, runs, artifacts
    assert flow_runs() == runs_before


@pytest.mark.parametrize("manifest", ["k8s", "slurm"])
def test_multinode_manifests_train_on_two_container_nodes(manifest, image, tmp_path):
    """The command lines and environment the PyTorchJob and the Slurm script give each node, rendered for 2
    CPU nodes (infra/multinode/render.py), run as two containers that meet at the c10d rendezvous."""
    repo = scratch_copy(tmp_path)  # tiny preset, data prepared on the host
    subprocess.run([BIN / "flair", "prepare", "--params", "params/cpu.yaml", "--out", "data/builtin"],
                   cwd=repo, check=True, capture_output=True, timeout=600)
    out = f"runs/{manifest}-2node"
    env = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}"}
    result = timed(f"multinode_{manifest}_seconds",
                   [sys.executable, REPO / "infra" / "multinode" / "render.py", manifest, "--nodes", "2",
                    "--params", "params/cpu.yaml", "--global-batch", "32", "--out", out, "--podman", image,
                    "--timeout", "900"],
                   env, timeout=1200, cwd=repo)
    nodes = json.loads(result.stdout)
    assert [n["host"] for n in nodes] == (["flair-cc3m-worker-0", "flair-cc3m-worker-1"] if manifest == "k8s"
                                          else ["node0", "node1"])
    rows = [json.loads(line) for line in (repo / out / "metrics.jsonl").read_text().splitlines()]
    steps = [row["step"] for row in rows if "loss/total" in row]
    # 128 training images at a global batch of 32: 4 steps only if both nodes joined (one alone makes 8)
    assert steps == [1, 2, 3, 4]
    assert list((repo / out / "checkpoints").glob("step-*.pt"))
