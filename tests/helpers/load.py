"""The load of tests/test_load.py and benchmarks/services_load.py: pretrain-eval flow runs submitted at once
to the served deployment beside one sweep flow run whose workers share one Optuna study, against the services
on PostgreSQL (a scratch copy of the repo on the tiny preset, free ports); then what, if anything, was lost or
duplicated in Prefect, MLflow and Optuna."""

import contextlib
import json
import os
import re
import time
import urllib.error
import urllib.request
from collections import Counter
from pathlib import Path
from unittest import mock

import yaml

from tests.helpers.scratch_repo import postgres_connection, scratch_platform

DEPLOYMENTS = {"flows.pretrain_eval": "pretrain-eval/load", "flows.sweep": "sweep/load"}
# Every flow run registers a version of one model, so their promotions all contend for its one lock.
METHOD = "flair"
EXPERIMENT = "flair-lab"  # pretrain-eval's default
# As few steps as still train, validate, checkpoint, evaluate, log and register (the tiny preset has 8); one
# benchmark, the promotion metric's.
FLOW_OVERRIDES = ["train.steps_per_epoch=2"]
BENCHMARKS = ["builtin_fine_grained"]
STUDY = "load"
SWEEP_CONFIG = "params/sweep_load.yaml"
# a trial: 3 steps on the tiny preset, validated after each (what the pruner judges), no checkpoint
TRIAL_OVERRIDES = ["train.steps_per_epoch=3", "train.validate_every=1", "train.checkpoint_every=1000000",
                   "loader.workers=0"]
FINAL = {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}
_HTTP = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback: never through a proxy


@contextlib.contextmanager
def load_platform(folder: Path, flow_runs: int, workers: int, trials: int):
    """The platform on PostgreSQL with both deployments served and the sweep's params file written; yields
    (repo, env) as scratch_platform does."""
    # A served deployment runs at most 5 flow runs at once (PREFECT_RUNNER_PROCESS_LIMIT) and looks for new
    # ones every 10 s; the load wants all of them at once, found as soon as the main job's are (2 s).
    runner = {"PREFECT_RUNNER_PROCESS_LIMIT": str(flow_runs), "PREFECT_RUNNER_POLL_FREQUENCY": "2"}
    with mock.patch.dict(os.environ, runner), \
            scratch_platform(folder, DEPLOYMENTS, db="postgres") as (repo, env):
        sweep = yaml.safe_load((repo / "params" / "sweep.yaml").read_text())["sweep"]
        sweep.update(study=STUDY, n_trials=trials, n_workers=workers, threads_per_worker=1,
                     pruner="median", pruner_warmup_steps=0, trial_overrides=TRIAL_OVERRIDES)
        (repo / SWEEP_CONFIG).write_text(yaml.safe_dump({"sweep": sweep}))
        yield repo, env


def prefect_api(env: dict, path: str, body: dict | None = None, retries: int = 5):
    """One call of the Prefect server's REST API. Over HTTP: a Prefect client in this process would keep the
    settings it read at import time. A busy server answers 503 (its SQLite database was locked): retried with
    back-off, as Prefect's own client does."""
    request = urllib.request.Request(env["PREFECT_API_URL"] + path, method="GET" if body is None else "POST",
                                     data=None if body is None else json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
    for attempt in range(retries + 1):
        try:
            with _HTTP.open(request, timeout=60) as reply:
                return json.load(reply)
        except urllib.error.HTTPError as err:
            if err.code != 503 or attempt == retries:
                raise
            time.sleep(2**attempt)


def start_load(env: dict, flow_runs: int) -> list[str]:
    """The sweep's flow run, then `flow_runs` pretrain-eval flow runs, all submitted at once; their ids. Each
    pretrain-eval run trains its own seed: distinct inputs, so none finds another's training or version."""
    def submit(deployment: str, parameters: dict) -> str:
        flow, name = deployment.split("/")
        deployment_id = prefect_api(env, f"/deployments/name/{flow}/{name}")["id"]
        return prefect_api(env, f"/deployments/{deployment_id}/create_flow_run",
                           {"parameters": parameters})["id"]

    ids = [submit("sweep/load", {"config_file": SWEEP_CONFIG})]
    ids += [submit("pretrain-eval/load", {"method": METHOD, "benchmarks": BENCHMARKS, "threads": 1,
                                          "overrides": [*FLOW_OVERRIDES, f"train.seed={seed}"]})
            for seed in range(flow_runs)]
    return ids


def flow_run_states(env: dict, ids: list[str]) -> dict[str, str]:
    runs = prefect_api(env, "/flow_runs/filter", {"flow_runs": {"id": {"any_": ids}}, "limit": len(ids)})
    return {run["id"]: run["state_type"] for run in runs}


def wait_until_final(env: dict, ids: list[str], timeout: float) -> dict[str, str]:
    """Each flow run's state type once all are final, or as they are at the timeout."""
    deadline = time.monotonic() + timeout
    while set((states := flow_run_states(env, ids)).values()) - FINAL and time.monotonic() < deadline:
        time.sleep(2)
    return states


def cancel_unfinished(env: dict, timeout: float = 120) -> None:
    """Cancel every flow run of the platform still going (after a failed or timed-out wait, or a submission
    that failed half-way) and wait for them to end, so that their processes are gone before the platform
    stops."""
    held = prefect_api(env, "/flow_runs/filter", {})
    unfinished = {run["id"]: run["state_type"] for run in held if run["state_type"] not in FINAL}
    for flow_run, state in unfinished.items():
        stop = "CANCELLING" if state == "RUNNING" else "CANCELLED"  # the runner stops a running one
        prefect_api(env, f"/flow_runs/{flow_run}/set_state",
                    {"state": {"type": stop, "name": stop.title()}, "force": True})
    if unfinished:
        wait_until_final(env, list(unfinished), timeout)


# ---- what was lost or duplicated: one line per problem ----------------------------------------------------
def lost_or_duplicated(repo: Path, env: dict, ids: list[str], flow_runs: int, workers: int, trials: int
                       ) -> list[str]:
    from mlflow import MlflowClient

    client = MlflowClient()
    runs = training_runs(client)
    return (flow_run_problems(env, ids) + mlflow_run_problems(repo, client, runs, flow_runs)
            + registry_problems(client, runs, flow_runs) + sweep_problems(repo, client, env, workers, trials))


def flow_run_problems(env: dict, ids: list[str]) -> list[str]:
    held = prefect_api(env, "/flow_runs/filter", {})  # every flow run the server holds
    problems = [f"Prefect flow run {run['name']} of {run['parameters'].get('method', 'sweep')} is "
                f"{run['state_type']}" for run in held if run["state_type"] != "COMPLETED"]
    if sorted(run["id"] for run in held) != sorted(ids):
        problems.append(f"Prefect holds {len(held)} flow runs; {len(ids)} were submitted")
    return problems


def training_runs(client) -> list:
    """Every run that logged a training, whatever its experiment (one in another would be lost to readers of
    ours)."""
    experiments = [e.experiment_id for e in client.search_experiments()]
    return client.search_runs(experiments, "tags.run_key LIKE '%'", max_results=1000)


def mlflow_run_problems(repo: Path, client, runs: list, flow_runs: int) -> list[str]:
    from flair_lab import tracking

    ours = tracking.experiment_id(EXPERIMENT)
    problems = [f"MLflow run {r.info.run_name} is in experiment {r.info.experiment_id}, not {EXPERIMENT}"
                for r in runs if r.info.experiment_id != ours]
    problems += [f"MLflow run {r.info.run_name} is {r.info.status}" for r in runs
                 if r.info.status != "FINISHED"]
    keys = Counter(r.data.tags["run_key"] for r in runs)
    if len(runs) != flow_runs or len(keys) != flow_runs:
        problems.append(f"{len(runs)} MLflow runs of {len(keys)} trainings for {flow_runs} flow runs")
    logged = metric_rows(repo, [r.info.run_id for r in runs])
    for run in runs:
        run_dir = repo / "runs" / "flows" / f"{METHOD}-{run.data.tags['run_key'][:12]}"
        expected = Counter(logged_metric_steps(run_dir))
        got = logged.get(run.info.run_id, Counter())
        lost, twice = expected - got, {pair: n for pair, n in got.items() if n > 1}
        unexpected = set(got) - set(expected)
        for what, found in (("lost", lost), ("logged more than once", twice), ("not in the run folder",
                                                                                unexpected)):
            if found:
                problems.append(f"MLflow run {run.info.run_name}: {len(found)} metric steps {what}, e.g. "
                                f"{min(found)}")
    return problems


def metric_rows(repo: Path, run_ids: list[str]) -> dict[str, Counter]:
    """Run id -> how often each (metric, step) is stored. Read from MLflow's tables in one query: the API
    would take a request per run and metric, and a step logged twice is there as two rows."""
    rows: dict[str, Counter] = {}
    with postgres_connection(repo, "mlflow") as connection, connection.cursor() as cursor:
        cursor.execute("SELECT run_uuid, key, step, count(*) FROM metrics WHERE run_uuid = ANY(%s) "
                       "GROUP BY run_uuid, key, step", (run_ids,))
        for run_id, key, step, count in cursor.fetchall():
            rows.setdefault(run_id, Counter())[(key, step)] = count
    return rows


def logged_metric_steps(run_dir: Path) -> list[tuple[str, int]]:
    """(metric, step) for everything a run folder holds that MLflow must have once: each training step's
    metrics, the validation curve, and at the last step the evaluation and the training budget."""
    steps = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    pairs = [(key, s["step"]) for s in steps for key in s if key not in ("step", "epoch")]
    for line in (run_dir / "val_metrics.jsonl").read_text().splitlines():
        record = json.loads(line)
        pairs += [(f"val/{key}", record["step"]) for key in record if key != "step"]
    last = steps[-1]["step"]
    evaluated = json.loads((run_dir / "metrics.json").read_text())
    return pairs + [(key, last) for key in (*evaluated, "train/steps", "train/samples", "train/seconds")]


def registry_problems(client, runs: list, flow_runs: int) -> list[str]:
    """One version per run, each with a promotion decision that its run's tags repeat; one first champion (two
    would mean two promotions both read "no champion yet"); the champion alias on a version that won."""
    from flair_lab import tracking

    name = tracking.registered_name(METHOD)
    versions = client.search_model_versions(f"name = '{name}'")
    by_id = {r.info.run_id: r for r in runs}
    problems = []
    if sorted(v.run_id for v in versions) != sorted(by_id) or len(versions) != flow_runs:
        problems.append(f"{len(versions)} versions of {name} for {len(by_id)} runs ({flow_runs} flow runs)")
    for version in versions:
        run = by_id.get(version.run_id)
        decision = (version.description or "").split(":")[0]
        if run is None:
            continue
        if version.tags.get("run_key") != run.data.tags["run_key"]:
            problems.append(f"version {version.version}: run_key differs from its run's")
        if decision not in ("champion", "challenger") or run.data.tags.get("promotion") != decision:
            problems.append(f"version {version.version}: decision {decision!r}, its run's tag "
                            f"{run.data.tags.get('promotion')!r}")
    firsts = [v.version for v in versions if "first version" in (v.description or "")]
    if len(firsts) != 1:
        problems.append(f"versions {firsts} were each promoted as the first champion")
    champion = client.get_registered_model(name).aliases.get("champion")
    if champion is None or not client.get_model_version(name, champion).description.startswith("champion"):
        problems.append(f"the champion alias is on version {champion}, which did not win")
    return problems


def sweep_problems(repo: Path, client, env: dict, workers: int, trials: int) -> list[str]:
    """The study holds exactly the trials asked for (a worker that asked once it was full records a surplus
    trial, pruned and not counted), none unfinished, each run by one worker and logged once to MLflow."""
    import optuna

    from flair_lab.experiments import SWEEP_EXPERIMENT
    from flair_lab.sweeps import FINISHED, is_surplus
    from services.stack import OPTUNA_STORAGE_ENV

    study = optuna.load_study(study_name=STUDY, storage=env[OPTUNA_STORAGE_ENV])
    held = study.get_trials(deepcopy=False)
    counted = sorted(t.number for t in held if not is_surplus(t))
    problems = [f"trial {t.number} is {t.state.name}" for t in held if t.state not in FINISHED]
    if len(counted) != trials or len({t.number for t in held}) != len(held):
        problems.append(f"the study counts trials {counted}; {trials} were asked for")
    ran = []
    for index in range(workers):
        log = repo / "runs" / "sweeps" / STUDY / f"worker-{index}.log"
        lines = log.read_text().strip().splitlines() if log.is_file() else ["no log"]
        found = re.search(r"worker finished: trials (\[.*\])", "\n".join(lines))
        ran += json.loads(found.group(1)) if found else []
        if not found:
            problems.append(f"sweep worker {index} did not finish: {lines[-1] if lines else 'no output'}")
    if sorted(ran) != counted:
        problems.append(f"the workers ran trials {sorted(ran)}; the study counts {counted}")
    experiment = client.get_experiment_by_name(SWEEP_EXPERIMENT).experiment_id
    logged = sorted(int(r.data.tags["optuna_trial"]) for r in
                    client.search_runs([experiment], "tags.sweep_role = 'trial'", max_results=1000))
    if logged != counted:
        problems.append(f"MLflow holds trial runs {logged}; the study counts {counted}")
    return problems
