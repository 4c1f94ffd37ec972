"""The sweep deployment through a real Prefect server: two workers on one Optuna study in a real PostgreSQL
server (`services start --db postgres`, which is also MLflow's store), one MLflow parent run with a nested run
per trial, the report in the S3 store, the best params file; a re-run resumes the study. The platform runs in
team mode (`--auth on`) bound to another loopback address: MLflow and Prefect refuse requests without the
generated credentials, the flows run with them, and neither they nor the database password appear anywhere a
run writes."""

import base64
import json
import urllib.error
import urllib.request

import pytest
import yaml

from tests.helpers.leaks import leaks
from tests.helpers.processes import listeners
from tests.helpers.scratch_repo import deployment_run, scratch_platform

pytestmark = pytest.mark.integration
T2I = "retrieval/builtin_fine_grained/flair/t2i_r1"
TEAM_ADDRESS = "127.0.0.2"  # "told otherwise" without opening anything beyond this machine


@pytest.fixture(scope="module")
def platform(tmp_path_factory):
    with scratch_platform(tmp_path_factory.mktemp("sweep"), {"flows.sweep": "sweep/test"}, db="postgres",
                          auth="on", bind=TEAM_ADDRESS) as (repo, env):
        sweep = yaml.safe_load((repo / "params" / "sweep.yaml").read_text())["sweep"]
        sweep.update(study="flow-test", n_trials=4, n_workers=2, pruner="median",
                     trial_overrides=["train.steps_per_epoch=4", "train.validate_every=2",
                                      "loader.workers=0"])
        (repo / "params" / "sweep_test.yaml").write_text(yaml.safe_dump({"sweep": sweep}))
        yield repo, env


def test_sweep_deployment_logs_nested_trials_reports_and_exports_the_best_params(platform):
    repo, env = platform
    from mlflow import MlflowClient

    from flair_core.run_config import load_run_config

    result = deployment_run(env, "sweep/test", "config_file=params/sweep_test.yaml")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]

    client = MlflowClient()
    experiment = client.get_experiment_by_name("flair-lab-sweeps")
    parents = client.search_runs([experiment.experiment_id], "tags.sweep_role = 'study'")
    assert len(parents) == 1 and parents[0].data.tags["sweep_study"] == "flow-test"
    parent = parents[0]
    trials = client.search_runs([experiment.experiment_id], "tags.sweep_role = 'trial'")
    assert sorted(int(r.data.tags["optuna_trial"]) for r in trials) == [0, 1, 2, 3]
    assert all(r.data.tags["mlflow.parentRunId"] == parent.info.run_id for r in trials)
    status = {"COMPLETE": "FINISHED", "PRUNED": "KILLED", "FAIL": "FAILED"}
    assert all(r.info.status == status[r.data.tags["optuna_state"]] for r in trials)
    complete = [r for r in trials if r.data.tags["optuna_state"] == "COMPLETE"]
    assert complete and all(f"objective/{T2I}" in r.data.metrics and "sampling.k" in r.data.params
                            for r in complete)
    curve = client.get_metric_history(complete[0].info.run_id, f"val/{T2I}")
    assert [m.step for m in curve] == [2, 4]  # the intermediate validations the pruner saw

    summary = json.loads((repo / "reports" / "sweeps" / "flow-test" / "summary.json").read_text())
    best = summary["best"]
    assert best["values"][0] == max(r.data.metrics[f"objective/{T2I}"] for r in complete)
    assert parent.data.params["n_trials"] == "4"
    artifacts = {a.path for a in client.list_artifacts(parent.info.run_id, "report")}
    assert {"report/summary.json", "report/trials.csv", "report/history.png", "report/best.yaml",
            "report/objective_vs_sampling_k.png"} <= artifacts
    exported = load_run_config([repo / "params" / "best.yaml"])
    assert exported.sampling.k == best["params"]["sampling.k"]
    assert exported.method_settings().tcs_weight == pytest.approx(
        best["params"]["method.settings.tcs_weight"])

    # Running the deployment again resumes the full study: no new trial, the same parent run.
    again = deployment_run(env, "sweep/test", "config_file=params/sweep_test.yaml")
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert len(client.search_runs([experiment.experiment_id], "tags.sweep_role = 'trial'")) == 4
    assert len(client.search_runs([experiment.experiment_id], "tags.sweep_role = 'study'")) == 1

    # The study lives in PostgreSQL (not the file's SQLite), and its password leaked nowhere.
    import optuna

    study = optuna.load_study(study_name="flow-test", storage=env["FLAIR_OPTUNA_STORAGE"])
    assert len([t for t in study.trials if t.state.is_finished()]) == 4
    assert (env["FLAIR_OPTUNA_STORAGE"].startswith("postgresql")
            and not (repo / "sweeps" / "optuna.db").exists())
    assert parent.data.params["storage"].startswith("postgresql+psycopg2://flair:***@127.0.0.1")
    password = json.loads((repo / ".services" / "postgres.json").read_text())["password"]
    team = json.loads((repo / ".services" / "auth.json").read_text())["password"]
    for secret in (password, team):
        assert leaks(secret, repo, env["PREFECT_API_URL"], prefect_auth=env["PREFECT_API_AUTH_STRING"]) == []


def status_of(url: str, auth: str | None = None, body: bytes | None = None) -> int:
    headers = {"Content-Type": "application/json"}
    if auth:
        headers["Authorization"] = "Basic " + base64.b64encode(auth.encode()).decode()
    request = urllib.request.Request(url, data=body, headers=headers, method="POST" if body else "GET")
    try:
        with urllib.request.build_opener(urllib.request.ProxyHandler({})).open(request, timeout=30) as reply:
            return reply.status
    except urllib.error.HTTPError as err:
        return err.code


def test_team_mode_refuses_requests_without_the_credentials_and_binds_where_told(platform):
    _, env = platform
    credentials = env["PREFECT_API_AUTH_STRING"]  # flair:<password>, also MLflow's basic-auth account
    wrong = credentials.split(":")[0] + ":guess"
    experiments = env["MLFLOW_TRACKING_URI"] + "/api/2.0/mlflow/experiments/search?max_results=1"
    flow_runs = env["PREFECT_API_URL"] + "/flow_runs/filter"
    assert [status_of(experiments), status_of(experiments, wrong), status_of(experiments, credentials)] == [
        401, 401, 200]
    assert [status_of(flow_runs, body=b"{}"), status_of(flow_runs, wrong, b"{}"),
            status_of(flow_runs, credentials, b"{}")] == [401, 401, 200]
    assert (status_of(env["MLFLOW_TRACKING_URI"] + "/health") == status_of(env["PREFECT_API_URL"] + "/health")
            == 200)
    listening = listeners()
    port = {name: int(env[key].rsplit(":", 1)[1].split("/")[0]) for name, key in (
        ("mlflow", "MLFLOW_TRACKING_URI"), ("prefect", "PREFECT_API_URL"), ("s3", "AWS_ENDPOINT_URL"))}
    assert listening[port["mlflow"]] == listening[port["prefect"]] == {TEAM_ADDRESS}
    assert listening[port["s3"]] == {"127.0.0.1"}  # the object store never leaves loopback

