"""The pretrain-eval deployment run through a real Prefect server, logged to a real MLflow server (its store a
real PostgreSQL server) whose artifacts land in the real S3 store; registration, promotion, re-run caching, a
failing evaluation and a cancelled run."""

import base64
import io
import re
import subprocess
import time

import pytest
from PIL import Image

from tests.helpers.paths import BIN
from tests.helpers.processes import wait_until_gone
from tests.helpers.scratch_repo import deployment_run as run_deployment
from tests.helpers.scratch_repo import postgres_connection, scratch_platform

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def platform(tmp_path_factory):
    """A scratch copy of the repo on the tiny preset, the services on free ports with MLflow's store in a real
    PostgreSQL server, the deployment served."""
    with scratch_platform(tmp_path_factory.mktemp("platform"), {"flows.pretrain_eval": "pretrain-eval/test"},
                          db="postgres") as (repo, env):
        yield repo, env


def registered_in_postgres(repo) -> list[tuple[str, int]]:
    with postgres_connection(repo, "mlflow") as connection, connection.cursor() as cursor:
        cursor.execute("SELECT name, version FROM model_versions ORDER BY name, version")
        return cursor.fetchall()


def deployment_run(env, *params):
    return run_deployment(env, "pretrain-eval/test", *params)


def test_deployment_trains_evaluates_registers_and_promotes(platform):
    repo, env = platform
    import boto3
    import mlflow
    from mlflow import MlflowClient

    start = time.time()
    first = deployment_run(env, "method=flair")
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    first_seconds = time.time() - start

    client = MlflowClient()
    versions = client.search_model_versions("name = 'flair-lab-flair'")
    assert [v.version for v in versions] == ["1"]
    champion = client.get_model_version_by_alias("flair-lab-flair", "champion")
    assert champion.version == "1" and champion.description.startswith("champion: first version")
    assert registered_in_postgres(repo) == [("flair-lab-flair", 1)]  # the registry lives in PostgreSQL
    run = client.get_run(champion.run_id)
    assert run.data.tags["method"] == "flair" and run.data.tags["data_hash"] and run.data.tags["git_commit"]
    assert run.data.tags["data_level"] in ("easy", "hard")  # from the prepared data's meta.json
    assert {k: champion.tags[k] for k in ("data_hash", "data_level", "preset")} == {
        k: run.data.tags[k] for k in ("data_hash", "data_level", "preset")}
    assert "retrieval/builtin_fine_grained/flair/t2i_r1" in run.data.metrics
    assert "segmentation/builtin_segmentation/attention/miou" in run.data.metrics
    assert run.data.params["train.model"] == "micro-32"
    assert len(client.get_metric_history(run.info.run_id, "loss/total")) == 8  # one per training step
    curve = client.get_metric_history(run.info.run_id, "val/retrieval/builtin_fine_grained/flair/t2i_r1")
    assert sorted(m.step for m in curve) == [4, 8]  # the validation curve, every validate_every steps
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"config.yaml", "metrics.jsonl", "metrics.json", "checkpoint", "attention"} <= artifacts
    s3 = boto3.session.Session().client("s3")  # a fresh session: earlier tests may have cached other keys
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket="mlflow")["Contents"]]
    assert any(k.endswith(".pt") for k in keys)  # the artifact store is the S3 server

    model = mlflow.pyfunc.load_model("models:/flair-lab-flair@champion")
    # users see what predict takes
    assert model.metadata.get_input_schema().input_names() == ["image", "caption"]
    buffer = io.BytesIO()
    Image.new("RGB", (32, 32), (200, 30, 30)).save(buffer, format="PNG")
    import pandas as pd

    image = base64.b64encode(buffer.getvalue()).decode()
    scores = model.predict(pd.DataFrame({"image": [image, image],
                                         "caption": ["a red square", "a blue ring"]}))
    assert len(scores) == 2 and all(-100 <= s <= 100 for s in scores)

    start = time.time()
    again = deployment_run(env, "method=flair")
    assert again.returncode == 0, again.stdout[-2000:]
    assert [v.version for v in client.search_model_versions("name = 'flair-lab-flair'")] == ["1"]
    assert time.time() - start < first_seconds  # training cached, nothing re-registered
    print(f"first run {first_seconds:.0f} s, cached re-run {time.time() - start:.0f} s")


def test_a_failing_evaluation_is_retried_then_fails_the_flow_without_promoting(platform):
    """FLAIR again (its training is cached from the test above), with one benchmark that cannot be
    evaluated."""
    _, env = platform
    from mlflow import MlflowClient

    client = MlflowClient()
    before = client.search_model_versions("name = 'flair-lab-flair'")
    result = deployment_run(env, "method=flair", 'benchmarks=["builtin_long", "cocoa"]')
    assert result.returncode != 0
    assert "unknown benchmark 'cocoa'" in result.stdout + result.stderr or "Failed" in result.stdout
    after = client.search_model_versions("name = 'flair-lab-flair'")
    assert [(v.version, v.description) for v in after] == [(v.version, v.description) for v in before]


def test_cancelling_a_flow_run_stops_its_training_down_to_the_last_process(platform):
    """A cancel from the UI (the same API call) while the flow trains: the runner stops the flow run's
    process, and nothing under it (torchrun, its worker in a session of its own, the loader worker)
    survives."""
    repo, env = platform
    started = subprocess.run([BIN / "prefect", "deployment", "run", "pretrain-eval/test", "-p", "method=clip",
                              "-p", 'overrides=["train.epochs=400"]'], env=env, capture_output=True,
                             text=True, check=True)
    flow_run = re.search(r"UUID: ([0-9a-f-]{36})", started.stdout).group(1)
    deadline = time.time() + 300
    while not (logs := list((repo / "runs" / "flows").glob("clip-*/metrics.jsonl"))):  # training is under way
        assert time.time() < deadline, (repo / ".services" / "serve.log").read_text()[-3000:]
        time.sleep(0.5)
    sent = time.monotonic()
    subprocess.run([BIN / "prefect", "flow-run", "cancel", flow_run], env=env, capture_output=True,
                   check=True)
    _, left = wait_until_gone(str(logs[0].parent), timeout=120)
    seconds = time.monotonic() - sent
    assert left == [], f"{seconds:.0f} s after the cancel: {left}"
    print(f"cancel to the last training process gone: {seconds:.1f} s")
    deadline = time.time() + 60
    while "Cancelled" not in (state := subprocess.run([BIN / "prefect", "flow-run", "inspect", flow_run],
                                                       env=env, capture_output=True, text=True,
                                                       check=False).stdout):
        assert time.time() < deadline, state[-2000:]
        time.sleep(1)
