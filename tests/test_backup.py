"""Backup and restore of the platform (services/backup.py) through `python -m services backup|restore`:
real services on free loopback ports hold real state (an MLflow run with metrics, a proxied artifact and a
registered version with an alias, a DVC object, a Prefect flow run; with PostgreSQL an Optuna study too).
Backed up while they run, then stopped and their ROOT destroyed; after the restore every piece is back, under
the same identities."""

import base64
import errno
import json
import os
import shutil
import socket
import stat
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest

from services import backup
from services.stack import LocalServices
from tests.helpers.processes import free_port
from tests.test_services import cli, service_ports

pytestmark = pytest.mark.integration

_HTTP = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback: never through a proxy
MODEL = "backup-model"


def test_a_sqlite_platform_in_team_mode_comes_back_whole(tmp_path, monkeypatch, record_property):
    services = LocalServices(tmp_path / "services", **service_ports(), auth="on")
    round_trip(services, tmp_path, monkeypatch, record_property)


def test_a_postgres_platform_comes_back_whole_with_its_optuna_study(tmp_path, monkeypatch, record_property):
    # under root the server runs as `postgres`, which cannot enter pytest's 0700 folders
    cluster = Path(tempfile.mkdtemp(prefix="flair-pg-"))
    cluster.chmod(0o755)
    try:
        services = LocalServices(tmp_path / "services", **service_ports(), db="postgres",
                                 postgres_port=free_port(), postgres_dir=cluster)
        round_trip(services, tmp_path, monkeypatch, record_property)
    finally:
        shutil.rmtree(cluster, ignore_errors=True)


def test_restore_refuses_what_is_not_a_backup_and_a_root_that_holds_anything(tmp_path):
    """One line each, and nothing written or removed (no services needed)."""
    root = tmp_path / "services"
    refused = cli(root, "restore", str(tmp_path))
    assert refused.returncode == 1 and refused.stderr == (
        f"error: {tmp_path} is not a complete backup: it has no manifest.json\n"), refused.stderr
    assert not root.exists()
    backup = tmp_path / "backup"
    backup.mkdir()
    (backup / "manifest.json").write_text(json.dumps({"format": 1}))
    root.mkdir()
    (root / "mlflow.db").write_bytes(b"someone's runs")
    refused = cli(root, "restore", str(backup))
    assert refused.returncode == 1 and refused.stderr == (
        f"error: {root} is not empty: restore goes into a new or empty folder only (nothing there is "
        "overwritten); move it away first\n"), refused.stderr
    assert {p.name: p.read_bytes() for p in root.iterdir()} == {"mlflow.db": b"someone's runs"}


def round_trip(services: LocalServices, tmp_path: Path, monkeypatch, record_property) -> None:
    root, out = services.root, tmp_path / "backup"
    try:
        services.start()
        env = services.client_env()
        for key in (k for k in env if k.startswith("MLFLOW_")):  # the MLflow client reads these
            monkeypatch.setenv(key, env[key])
        made = make_state(env, tmp_path)
        began = time.monotonic()
        done = cli(root, "backup", str(out))
        record_property("backup_seconds", round(time.monotonic() - began, 1))
        assert done.returncode == 0 and done.stdout.startswith(f"backup of {root} in {out}: "), \
            done.stdout + done.stderr
        print(done.stdout.strip())
        again = cli(root, "backup", str(out))
        assert again.returncode == 1 and again.stderr == (
            f"error: {out} already exists: nothing was written; choose a new name\n"), again.stderr
        with monkeypatch.context() as broken:  # a backup failing midway (after the databases) leaves nothing
            broken.setattr(backup, "_save_objects", disk_full)
            with pytest.raises(OSError, match="No space left"):
                backup.backup(services, tmp_path / "broken")
        assert not (tmp_path / "broken").exists()
    finally:
        services.stop()
    refused = cli(root, "backup", str(tmp_path / "second"))
    assert refused.returncode == 1 and refused.stderr.count("\n") == 1 and "not running" in refused.stderr
    assert not (tmp_path / "second").exists() and [p.name for p in tmp_path.iterdir()
                                                   if p.name.startswith(".")] == []  # no temp folder left

    # private: the folder 0700, every file in it 0600 (it holds the keys and passwords)
    assert stat.S_IMODE(out.stat().st_mode) == 0o700
    loose = {str(p.relative_to(out)): oct(stat.S_IMODE(p.stat().st_mode)) for p in out.rglob("*")
             if stat.S_IMODE(p.stat().st_mode) != (0o700 if p.is_dir() else 0o600)}
    assert loose == {}, loose
    manifest = json.loads((out / "manifest.json").read_text())
    assert {b: c["objects"] for b, c in manifest["buckets"].items()} == {
        bucket: len(keys) for bucket, keys in made["objects"].items()}
    record_property("backup_bytes", sum(p.stat().st_size for p in out.rglob("*") if p.is_file()))

    shutil.rmtree(root)
    if services.db == "postgres":
        shutil.rmtree(services.postgres_dir / "data")
    # a restore that fails (here: a busy port as it starts a service) leaves nothing but its logs
    service = "postgres" if services.db == "postgres" else "mlflow"
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        failed = cli(root, "restore", str(out), f"--{service}-port", str(busy.getsockname()[1]))
    reason = (f"PostgreSQL exited during start-up; see {root}/logs/postgres.log" if service == "postgres"
              else "MLflow is already in use")
    assert failed.returncode == 1 and failed.stderr.count("\n") == 1 and reason in failed.stderr, \
        failed.stderr
    assert {p.name for p in root.iterdir()} <= {"logs"} and not (services.postgres_dir / "data").exists()
    began = time.monotonic()
    try:
        done = cli(root, "restore", str(out))
        record_property("restore_seconds", round(time.monotonic() - began, 1))
        assert done.returncode == 0, done.stdout + done.stderr
        print(done.stdout.strip())
        restored = LocalServices(root)
        assert restored.client_env() == env  # the same URLs, S3 keys, team account and database password
        assert all(s["up"] for s in restored.status().values())
        check_state(env, made, tmp_path)
        refused = cli(root, "restore", str(out))
        assert refused.returncode == 1 and refused.stderr == (
            f"error: the services under {root} are running: restore goes into a new or empty folder only; "
            "stop them and move the folder away first\n"), refused.stderr
    finally:
        LocalServices(root).stop()


def disk_full(*_):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


# ---- the state ------------------------------------------------------------------------------------------
def make_state(env: dict, tmp_path: Path) -> dict:
    from mlflow import MlflowClient
    from mlflow.entities import Metric, Param

    client = MlflowClient(env["MLFLOW_TRACKING_URI"])
    experiment = client.create_experiment("backup-test")
    run = client.create_run(experiment, run_name="to-keep").info.run_id
    now = int(time.time() * 1000)
    client.log_batch(run, metrics=[Metric("loss", 1 / (step + 1), now + step, step) for step in range(5)],
                     params=[Param("lr", "0.1")])
    artifact = tmp_path / "weights.bin"
    artifact.write_bytes(os.urandom(70_000))
    client.log_artifact(run, str(artifact))
    client.set_terminated(run)
    client.create_registered_model(MODEL)
    version = client.create_model_version(MODEL, f"runs:/{run}/weights.bin", run_id=run).version
    client.set_registered_model_alias(MODEL, "champion", version)

    s3 = s3_client(env)
    s3.put_object(Bucket="dvc", Key="files/md5/3f/0c2ad4d1e0", Body=os.urandom(5000))

    flow = prefect(env, "POST", "/flows/", {"name": "backup-test"})["id"]
    flow_run = prefect(env, "POST", "/flow_runs/", {"flow_id": flow, "name": "kept-run",
                                                    "state": {"type": "COMPLETED"}})["id"]
    made = {"experiment": experiment, "run": run, "version": version, "flow_run": flow_run,
            "artifact": artifact.read_bytes()}
    if "FLAIR_OPTUNA_STORAGE" in env:
        import optuna

        study = optuna.create_study(study_name="backup-study", storage=env["FLAIR_OPTUNA_STORAGE"])
        study.optimize(lambda trial: trial.suggest_float("x", -1, 1) ** 2, n_trials=3)
        made["trials"] = [(t.number, t.params, t.value, t.state) for t in study.trials]
    made["objects"] = objects(s3)
    return made


def check_state(env: dict, made: dict, tmp_path: Path) -> None:
    from mlflow import MlflowClient

    client = MlflowClient(env["MLFLOW_TRACKING_URI"])
    run = client.get_run(made["run"])
    assert (run.info.experiment_id, run.info.run_name, run.info.status) == (made["experiment"], "to-keep",
                                                                           "FINISHED")
    assert run.data.params == {"lr": "0.1"}
    assert sorted((m.step, m.value) for m in client.get_metric_history(made["run"], "loss")) == [
        (step, 1 / (step + 1)) for step in range(5)]
    fetched = client.download_artifacts(made["run"], "weights.bin", str(tmp_path / "fetched"))
    assert Path(fetched).read_bytes() == made["artifact"]
    champion = client.get_model_version_by_alias(MODEL, "champion")
    assert (champion.version, champion.run_id) == (made["version"], made["run"])
    assert len(client.search_model_versions(f"name='{MODEL}'")) == 1

    assert objects(s3_client(env)) == made["objects"]  # every key, with the same ETag (MD5 of its bytes)

    flow_run = prefect(env, "GET", f"/flow_runs/{made['flow_run']}")
    assert (flow_run["name"], flow_run["state_type"]) == ("kept-run", "COMPLETED")
    if "trials" in made:
        import optuna

        study = optuna.load_study(study_name="backup-study", storage=env["FLAIR_OPTUNA_STORAGE"])
        assert [(t.number, t.params, t.value, t.state) for t in study.trials] == made["trials"]


def s3_client(env: dict):
    import boto3

    # a session of its own: boto3's default session keeps the first keys it resolved
    return boto3.session.Session().client(
        "s3", endpoint_url=env["AWS_ENDPOINT_URL"], region_name=env["AWS_DEFAULT_REGION"],
        aws_access_key_id=env["AWS_ACCESS_KEY_ID"], aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"])


def objects(s3) -> dict[str, dict[str, str]]:
    """{bucket: {key: ETag}} of every bucket."""
    return {bucket["Name"]: {o["Key"]: o["ETag"]
                             for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket["Name"])
                             for o in page.get("Contents", [])}
            for bucket in s3.list_buckets()["Buckets"]}


def prefect(env: dict, method: str, path: str, body: dict | None = None) -> dict:
    request = urllib.request.Request(env["PREFECT_API_URL"] + path, method=method,
                                     data=None if body is None else json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
    if "PREFECT_API_AUTH_STRING" in env:  # team mode
        request.add_header("Authorization",
                           "Basic " + base64.b64encode(env["PREFECT_API_AUTH_STRING"].encode()).decode())
    with _HTTP.open(request, timeout=30) as reply:
        return json.loads(reply.read())
