"""The chaos suite: real services on 127.0.0.1, each fault injected by killing the real process (SIGKILL of
its whole process group, as a crash would); what the user sees, and that nothing is lost or registered twice.
docs/reliability.md holds the fault table these tests back (the full-disk fault is in test_training.py, the
hostile uploads in test_dashboard.py)."""

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from unittest import mock

import pytest

from flair_core.evaluation.headline import promotion_metric
from flair_core.methods import get_method
from services.stack import LocalServices
from services.supervisor import members
from tests.helpers.paths import BIN, REPO
from tests.helpers.processes import cpu_burners, wait_until_gone
from tests.test_services import service_ports

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def platform(tmp_path_factory):
    services = LocalServices(tmp_path_factory.mktemp("chaos") / "services", **service_ports())
    services.start()
    try:
        with mock.patch.dict(os.environ, services.client_env()):
            yield services
    finally:
        services.stop()


def crash(services: LocalServices, name: str) -> None:
    proc = json.loads((services.root / "state.json").read_text())["pids"][name]
    os.killpg(proc["pid"], signal.SIGKILL)
    while members(proc):
        time.sleep(0.1)


def scored(value: float, metric: str) -> dict[str, float]:
    return {metric: value, f"{metric}_ci_low": value - 1, f"{metric}_ci_high": value + 1,
            f"{metric}_chance": 0.4}


@pytest.fixture(scope="module")
def trained(tiny_data, tmp_path_factory):
    from flair_core.run_config import load_run_config
    from flair_core.training.loop import Trainer

    out = tmp_path_factory.mktemp("trained") / "run"
    settings = {"train.model": "micro-32", "train.shards": str(tiny_data / "train"), "train.batch_size": 16,
                "train.steps_per_epoch": 4, "loader.workers": 0}
    Trainer(load_run_config([], [f"{k}={v}" for k, v in settings.items()]), out).fit()
    return out


def test_mlflow_killed_while_registering_leaves_no_version_and_a_rerun_registers_exactly_one(
        platform, trained, monkeypatch):
    from mlflow import MlflowClient

    from flair_lab import tracking

    # the flow's task retries are not under test here
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    metric = promotion_metric(get_method("flair").primary_mode)
    tags = {"run_key": "chaos-registration", "git_commit": "c", "data_hash": "d", "data_level": "easy",
            "method": "flair", "preset": "micro-32"}
    register = tracking.mlflow.register_model

    # the run and its artifacts are logged; the server dies before the version
    def crash_first(*args, **kwargs):
        crash(platform, "mlflow")
        return register(*args, **kwargs)

    monkeypatch.setattr(tracking.mlflow, "register_model", crash_first)
    with pytest.raises(Exception, match="127.0.0.1"):
        tracking.log_training_run(trained, "flair", scored(6.0, metric), tags, "chaos")
    monkeypatch.setattr(tracking.mlflow, "register_model", register)
    assert platform.status()["mlflow"]["up"] is False

    platform.start()  # MLflow alone comes back; S3 and Prefect kept running
    client = MlflowClient()
    name = tracking.registered_name("flair")
    assert client.search_model_versions(f"name = '{name}'") == []  # nothing half-registered
    run_id, version = tracking.log_training_run(trained, "flair", scored(6.0, metric), tags, "chaos")
    assert (tracking.log_training_run(trained, "flair", scored(6.0, metric), tags, "chaos")
            == (run_id, version))
    versions = client.search_model_versions(f"name = '{name}'")
    assert ([(v.version, v.run_id, v.tags["run_key"]) for v in versions]
            == [("1", run_id, "chaos-registration")])
    runs = client.search_runs([tracking.experiment_id("chaos")], "tags.run_key = 'chaos-registration'")
    assert [r.info.run_id for r in runs] == [run_id]  # the crashed attempt's run was deleted
    assert client.get_run(run_id).info.status == "FINISHED"


def test_a_run_logged_while_another_process_creates_its_experiment_lands_in_that_experiment(
        platform, trained, monkeypatch):
    """Flow runs side by side that log first race to create the experiment. MLflow's set_experiment answers
    the loser's "already exists" with the experiment but without making it the active one (mlflow 3.17), so
    the run went to whatever experiment was active: here the test's earlier one, in a fresh flow-run process
    Default."""
    from mlflow import MlflowClient
    from mlflow.tracking._tracking_service.client import TrackingServiceClient

    from flair_lab import tracking

    lookup = TrackingServiceClient.get_experiment_by_name
    raced = []

    def created_meanwhile(self, name):  # the other process creates it between our lookup and our create
        if name == "raced" and not raced:
            raced.append(MlflowClient().create_experiment(name))
            return None
        return lookup(self, name)

    monkeypatch.setattr(TrackingServiceClient, "get_experiment_by_name", created_meanwhile)
    metric = promotion_metric(get_method("flair").primary_mode)
    tags = {"run_key": "raced-experiment", "git_commit": "c", "data_hash": "d", "data_level": "easy",
            "method": "flair", "preset": "micro-32"}
    run_id, _ = tracking.log_training_run(trained, "flair", scored(6.0, metric), tags, "raced")
    assert raced and MlflowClient().get_run(run_id).info.experiment_id == raced[0]


def test_two_promotions_of_one_model_at_once_leave_one_champion_and_consistent_aliases(platform):
    """Two processes promote two versions that score the same, so whichever goes second must stay challenger.
    Without the flow's lock both would read "no champion yet" (each decision is slowed to make that window
    certain) and both win."""
    from mlflow import MlflowClient
    from mlflow.entities import Metric

    from flair_lab import tracking

    client = MlflowClient()
    metric = promotion_metric(get_method("clip").primary_mode)
    name = tracking.registered_name("clip")
    experiment = client.create_experiment("chaos-promotion")
    client.create_registered_model(name)
    candidates = []
    for _ in range(2):
        run = client.create_run(experiment)
        client.log_batch(run.info.run_id,
                         metrics=[Metric(k, v, 0, 0) for k, v in scored(6.0, metric).items()])
        version = client.create_model_version(name, f"{run.info.artifact_uri}/model", run.info.run_id).version
        candidates.append((version, run.info.run_id))
    promotions = [subprocess.Popen([sys.executable, "-m", "tests.helpers.slow_promotion", "clip", version,
                                    run_id, metric],
                                   cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                  for version, run_id in candidates]
    results = {}
    for (version, _), promotion in zip(candidates, promotions, strict=True):
        stdout, stderr = promotion.communicate(timeout=300)
        assert promotion.returncode == 0, stderr[-3000:]
        results[version] = json.loads(next(line for line in reversed(stdout.splitlines())
                                           if line.startswith("{")))
    assert sorted(r["alias"] for r in results.values()) == ["challenger", "champion"], results
    first = next(v for v, r in results.items() if r["alias"] == "champion")
    second = next(v for v, r in results.items() if r["alias"] == "challenger")
    assert results[first]["reason"].startswith("first version")
    assert results[second]["previous_champion"] == first and "does not beat" in results[second]["reason"]
    assert client.get_model_version_by_alias(name, "champion").version == first
    assert client.get_model_version_by_alias(name, "challenger").version == second
    for version, result in results.items():  # the registry says what the flow said
        assert client.get_model_version(name, version).description == f"{result['alias']}: {result['reason']}"


def test_s3_killed_and_restarted_while_training_reads_shards_costs_a_pause_not_the_run(
        platform, tiny_data, tmp_path):
    from flair_core.data.storage import upload_folder

    upload_folder(tiny_data / "train", "s3://dvc/chaos/train")
    out = tmp_path / "run"
    # every epoch opens its shards again (~2 s apart): one falls inside the outage
    steps_per_epoch, epochs = 8, 5
    settings = {"train.model": "micro-32", "train.shards": "s3://dvc/chaos/train/shard-{000000..000003}.tar",
                "train.batch_size": 16, "train.steps_per_epoch": steps_per_epoch, "train.epochs": epochs,
                "train.checkpoint_every": steps_per_epoch, "loader.workers": 1}
    command = [sys.executable, "-m", "flair_cli", "train", "--out", str(out),
               *(x for k, v in settings.items() for x in ("--set", f"{k}={v}"))]
    training = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    metrics = out / "metrics.jsonl"
    deadline = time.time() + 120
    while not (metrics.is_file() and len(metrics.read_text().splitlines()) >= steps_per_epoch):
        assert training.poll() is None and time.time() < deadline, training.communicate()
        time.sleep(0.2)
    crash(platform, "seaweedfs")
    outage = time.monotonic()
    time.sleep(5)
    assert training.poll() is None, training.communicate()  # still waiting on the store, not failed
    platform.start()
    outage = time.monotonic() - outage
    _, stderr = training.communicate(timeout=300)
    assert training.returncode == 0, stderr[-3000:]
    steps = [json.loads(line) for line in metrics.read_text().splitlines()]
    assert [s["step"] for s in steps] == list(range(1, steps_per_epoch * epochs + 1))
    assert max(s["seconds"] for s in steps) > 4, "no step waited for the store: the outage was not felt"
    print(f"outage {outage:.1f} s; longest step {max(s['seconds'] for s in steps):.1f} s")


def test_prefect_restarted_in_training_and_mlflow_down_before_logging_the_flow_completes_and_registers_once(
        platform, tmp_path):
    """pretrain-eval in a scratch repo on the tiny preset: Prefect crashes while the flow trains and comes
    back; MLflow crashes before the flow logs and comes back ~10 s later (5 s down, ~6 s to start). The
    Prefect client and the flow's task retries ride both out: the flow completes, its run is recorded
    Completed, and the model has exactly one version."""
    from mlflow import MlflowClient

    from flair_core.data.registry import benchmark_names
    from tests.helpers.scratch_repo import scratch_copy

    evaluations = len(benchmark_names(builtin=True))  # as the flow's

    repo = scratch_copy(tmp_path)
    env = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}"}
    flow = subprocess.Popen([sys.executable, "-m", "flows.pretrain_eval", "run", "--method", "dreamlip"],
                            cwd=repo, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)

    def wait_for(pattern: str, count: int = 1) -> None:
        deadline = time.time() + 300
        while len(list(repo.glob(pattern))) < count:
            assert flow.poll() is None and time.time() < deadline, flow.communicate()[0][-3000:]
            time.sleep(0.2)

    wait_for("runs/flows/dreamlip-*/metrics.jsonl")
    crash(platform, "prefect")
    platform.start()
    # in the flow run's folder; next: attention, logging
    wait_for("runs/flows/dreamlip-*/eval/*/*.json", evaluations)
    crash(platform, "mlflow")
    time.sleep(5)
    platform.start()
    output, _ = flow.communicate(timeout=600)
    assert flow.returncode == 0, output[-4000:]
    client = MlflowClient()
    assert [v.version for v in client.search_model_versions("name = 'flair-lab-dreamlip'")] == ["1"]
    assert client.get_model_version_by_alias("flair-lab-dreamlip", "champion").version == "1"
    # over HTTP: a Prefect client in this process would keep its settings from import time (and threads that
    # later forked data-loader workers inherit)
    request = urllib.request.Request(os.environ["PREFECT_API_URL"] + "/flow_runs/filter", data=b"{}",
                                     headers={"Content-Type": "application/json"}, method="POST")
    with urllib.request.build_opener(urllib.request.ProxyHandler({})).open(request, timeout=30) as reply:
        assert [run["state_type"] for run in json.load(reply)] == ["COMPLETED"]


def processes_under(folder: Path) -> list[str]:
    """Live processes working in `folder` (services, flow runs, training, evaluation all do): pid and
    command."""
    found = []
    for proc in Path("/proc").iterdir():
        try:
            if not proc.name.isdigit() or not os.readlink(proc / "cwd").startswith(str(folder)):
                continue
            if (proc / "stat").read_text().rsplit(")", 1)[1].split()[0] == "Z":
                continue
            command = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            found.append(f"{proc.name} {command[:120]}")
        except OSError:  # gone meanwhile, or not ours to read
            continue
    return found


@pytest.mark.parametrize("load", ["idle", "loaded"])
def test_sigterm_to_the_main_job_stops_its_flow_run_and_the_services_and_leaves_no_process(
        platform, tmp_path, load):
    """The last tests here: the main job finds the module's services running, and its SIGTERM stops them, its
    flow run and the training below it (torchrun's worker in a session of its own, and its loader worker) on
    an idle machine and beside two CPU-burning processes."""
    from tests.helpers.scratch_repo import scratch_copy

    repo = scratch_copy(tmp_path)
    (repo / ".venv").symlink_to(Path(sys.executable).parents[1])
    root = platform.root
    if load == "loaded":
        platform.start()  # the idle case stopped them
    env = {**os.environ, "FLAIR_METHODS": "flair", "FLAIR_SERVICES_ROOT": str(root)}
    job = subprocess.Popen(["bash", "infra/main_job.sh"], cwd=repo, env=env, stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True)
    with cpu_burners(2 if load == "loaded" else 0):
        deadline = time.time() + 300
        while not list((repo / "runs" / "flows").glob("flair-*/metrics.jsonl")):  # training is under way
            assert job.poll() is None and time.time() < deadline, job.communicate()
            time.sleep(0.5)
        sent = time.monotonic()
        job.send_signal(signal.SIGTERM)
        stdout, stderr = job.communicate(timeout=180)
        _, left_training = wait_until_gone(str(repo / "runs" / "flows"), timeout=60)
        seconds = time.monotonic() - sent
    assert job.returncode == 130, stdout[-2000:] + stderr[-2000:]
    assert stderr.strip().splitlines()[-1] == \
        "main job interrupted: stopping its flow runs, the dashboard and the services", stderr[-2000:]
    assert left_training == [], left_training  # nothing whose command line names the run folder
    print(f"main job, {load}: SIGTERM to the last training process gone in {seconds:.1f} s")
    assert json.loads((root / "state.json").read_text())["pids"] == {}
    assert not any(s["up"] for s in platform.status().values())
    deadline = time.time() + 30  # a data-loader worker notices its trainer is gone within seconds
    while (left := processes_under(repo) + processes_under(root)) and time.time() < deadline:
        time.sleep(0.5)
    assert left == [], left
