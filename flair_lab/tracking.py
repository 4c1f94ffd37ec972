"""MLflow adapter: one run per training job, the model in the registry, champion/challenger promotion.

Everything is read from the run folder the library wrote (config.yaml, metrics.jsonl, checkpoints, eval
JSONs): MLflow records those same files rather than anything computed here.
"""

from __future__ import annotations

import base64
import io
import json
import math
import tempfile
import time
from pathlib import Path

import mlflow
import pandas as pd
from mlflow import MlflowClient
from mlflow.entities import Metric, Param
from mlflow.models import ModelSignature
from mlflow.types import ColSpec, Schema
from PIL import Image

from flair_core.checkpoints import newest
from flair_core.evaluation import stats
from flair_core.evaluation.comparison import noise_of
from flair_core.evaluation.headline import headline, is_headline
from flair_core.evaluation.metrics import non_finite_metrics
from flair_core.evaluation.records import SUFFIX, RecordsError, load_records, outcomes
from flair_core.run_config import read_run_config
from flair_lab.pyfunc_model import ImageTextScorer

REPO = Path(__file__).resolve().parents[1]
EVAL_ARTIFACTS = "eval"  # a run's per-query records: eval/<benchmark>.queries.npz
# Pinned so that logging never resolves requirements over the network (and takes ~1 s, not ~5 s).
PIP_REQUIREMENTS = ["torch==2.14.1", "torchvision==0.29.1", "open_clip_torch==3.3.0", "webdataset==1.0.2",
                    "pydantic>=2.7,<3", "pyyaml", "safetensors", "pandas", "mlflow==3.17.2"]


def flatten(data: dict, prefix: str = "") -> dict[str, str]:
    out = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            out.update(flatten(value, f"{name}."))
        else:
            out[name] = json.dumps(value) if isinstance(value, list | tuple | dict) else str(value)
    return out


def experiment_id(name: str) -> str:
    experiment = MlflowClient().get_experiment_by_name(name)
    return experiment.experiment_id if experiment else ""


def registered_name(method: str) -> str:
    return f"flair-lab-{method}"


def data_level(data_root: Path) -> str:
    """The built-in data's named difficulty, from the config `flair prepare` wrote into its meta.json; data
    prepared before levels existed is the original set, "hard". "" when the folder has no meta.json."""
    meta = Path(data_root) / "meta.json"
    if not meta.is_file():
        return ""
    return json.loads(meta.read_text()).get("config", {}).get("level", "hard")


def find_existing(client: MlflowClient, name: str, run_key: str):
    """A version already registered for these exact inputs (so a re-run adds no duplicate)."""
    for version in client.search_model_versions(f"name = '{name}'"):
        if version.tags.get("run_key") == run_key:
            return version
    return None


def world_size(steps: list[dict], config: dict) -> int:
    """Ranks of a run, from its logged rate: samples_per_s = batch_size × ranks / seconds."""
    if not steps or "seconds" not in steps[-1]:
        return 1
    last = steps[-1]
    return max(1, round(last["samples_per_s"] * last["seconds"] / config["train"]["batch_size"]))


def log_training_run(run_dir: Path, method: str, eval_metrics: dict[str, float], tags: dict[str, str],
                     experiment: str, attention_pngs: list[Path] = (), eval_dir: Path | None = None
                     ) -> tuple[str, str]:
    """Log the run folder to MLflow and register its model; returns (run_id, model version). The per-query
    records in `eval_dir` go to the run's `eval/` artifacts, where the promotion gate reads them. A run with a
    metric that is not finite is refused before anything is logged: such a model is never registered."""
    broken = non_finite_metrics(eval_metrics)
    if broken:
        raise ValueError(f"{run_dir}: {len(broken)} evaluation metrics are not finite, first: {broken[0]} = "
                         f"{eval_metrics[broken[0]]}; nothing logged or registered")
    client = MlflowClient()
    name = registered_name(method)
    existing = find_existing(client, name, tags["run_key"])
    if existing is not None:
        if client.get_run(existing.run_id).info.status == "RUNNING":  # registered, then the server went away
            client.set_terminated(existing.run_id)
        return existing.run_id, existing.version
    exp_id = mlflow.set_experiment(experiment).experiment_id
    # An attempt that died before registering (e.g. the server went down) left a run with no model: it goes,
    # so the experiment holds one run per registered version.
    for stale in client.search_runs([exp_id], f"tags.run_key = '{tags['run_key']}'"):
        client.delete_run(stale.info.run_id)
    config = read_run_config(run_dir).model_dump(mode="json")
    checkpoint = newest(run_dir / "checkpoints")
    # The experiment named, not the active one: set_experiment leaves that unchanged when another flow run
    # created the experiment between its lookup and its create (mlflow 3.17), and the run went elsewhere.
    with mlflow.start_run(experiment_id=exp_id, run_name=f"{method}-{tags['run_key'][:8]}", tags=tags) as run:
        mlflow.log_params(flatten(config))
        steps = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
        now = int(time.time() * 1000)
        history = [Metric(k, float(v), now, int(s["step"])) for s in steps for k, v in s.items()
                   if k not in ("step", "epoch")]
        validations = run_dir / "val_metrics.jsonl"  # the validation curve: what says a run learned
        if validations.is_file():
            for line in validations.read_text().splitlines():
                record = json.loads(line)
                history += [Metric(f"val/{k}", float(v), now, int(record["step"])) for k, v in record.items()
                            if k != "step"]
        for start in range(0, len(history), 1000):  # log_batch takes at most 1,000 metrics per call
            client.log_batch(run.info.run_id, metrics=history[start : start + 1000])
        final_step = int(steps[-1]["step"]) if steps else 0
        mlflow.log_metrics({k: float(v) for k, v in eval_metrics.items()}, step=final_step)
        # the budget a run spent, for equal-budget comparisons: steps, samples and wall time of the steps
        budget = {"train/steps": final_step,
                  "train/samples": final_step * config["train"]["batch_size"] * world_size(steps, config)}
        if steps and all("seconds" in s for s in steps):
            budget["train/seconds"] = sum(s["seconds"] for s in steps)
        mlflow.log_metrics(budget, step=final_step)
        mlflow.log_artifact(str(run_dir / "config.yaml"))
        mlflow.log_artifact(str(run_dir / "metrics.jsonl"))
        if validations.is_file():
            mlflow.log_artifact(str(validations))
        (run_dir / "metrics.json").write_text(json.dumps(eval_metrics, indent=1, sort_keys=True))
        mlflow.log_artifact(str(run_dir / "metrics.json"))
        for png in attention_pngs:
            mlflow.log_artifact(str(png), artifact_path="attention")
        for records in sorted(Path(eval_dir).glob(f"*{SUFFIX}")) if eval_dir else ():
            mlflow.log_artifact(str(records), artifact_path=EVAL_ARTIFACTS)
        mlflow.log_artifact(str(checkpoint), artifact_path="checkpoint")
        info = mlflow.pyfunc.log_model(
            name="model", python_model=ImageTextScorer(), artifacts={"checkpoint": str(checkpoint)},
            pip_requirements=PIP_REQUIREMENTS, code_paths=[str(REPO / "flair_core"), str(REPO / "flair_lab")],
            signature=SIGNATURE, input_example=input_example(),
        )
        # The version and its lineage tags in one request: a version without its run_key could not be found
        # by a re-run, which would register the same inputs twice.
        version = mlflow.register_model(info.model_uri, name, tags={key: tags.get(key, "") for key in (
            "run_key", "git_commit", "data_hash", "data_level", "method", "preset")}).version
    return run.info.run_id, str(version)


# What `predict` takes and returns, so pyfunc users see it in the registry (flair_lab/pyfunc_model.py).
SIGNATURE = ModelSignature(
    # image: base64 of PNG/JPEG bytes
    inputs=Schema([ColSpec("string", "image"), ColSpec("string", "caption")]),
    outputs=Schema([ColSpec("double", "score")]),
)


def input_example() -> pd.DataFrame:
    buffer = io.BytesIO()
    Image.new("RGB", (32, 32), (200, 30, 30)).save(buffer, format="PNG")
    return pd.DataFrame({"image": [base64.b64encode(buffer.getvalue()).decode()],
                         "caption": ["a red square."]})


def decide(candidate: dict[str, float], champion: dict[str, float] | None, primary: str,
           tolerance: float, difference: stats.Difference | None = None) -> tuple[str, str]:
    """("champion" | "challenger", reason). Pure: the promotion rule on two metric dicts and, where both runs
    kept per-query records, their paired difference on the primary metric (`paired_difference`).

    A candidate takes the title only if its gain on the primary metric is beyond noise: paired, the 95 %
    interval of its difference from the champion on the same queries must exceed 0. Without the champion's
    records (runs logged before they were kept) the low end of the candidate's own interval must exceed the
    champion's value, and the reason says which rule decided. A primary metric whose interval reaches down to
    its chance level is no evidence of learning: such a candidate never displaces a champion.
    """
    if primary not in candidate:
        raise ValueError(f"primary metric {primary!r} was not evaluated")
    broken = non_finite_metrics({k: v for k, v in candidate.items() if k == primary or is_headline(k)})
    if broken:  # NaN compares false with everything: without this it would pass every test below
        return "challenger", f"{broken[0]} = {candidate[broken[0]]} is not finite: never promoted"
    value = candidate[primary]
    low, high, chance, _ = noise_of(candidate, primary)
    interval = f" [{low:.2f}, {high:.2f}]" if low is not None and high is not None else ""
    at_chance = low is not None and chance is not None and low <= chance
    if champion is None:  # the first version is champion whatever it scores, but the reason says so
        note = f", not beyond chance ({chance:.2f})" if at_chance else ""
        return "champion", f"first version: {primary} = {value:.2f}{interval}{note}"
    if at_chance:
        return "challenger", (f"{primary} {value:.2f}{interval} is not beyond chance ({chance:.2f}): stays "
                              "challenger")
    if primary not in champion or not math.isfinite(champion[primary]):
        return "champion", f"{primary} {value:.2f}{interval}: the champion has no finite {primary}"
    best = champion[primary]
    gain = value - best
    if difference is not None:
        paired = (f"paired difference {difference.value:+.2f} [{difference.low:+.2f}, "
                  f"{difference.high:+.2f}], p = {difference.p:.3f}")
        if difference.low <= 0:
            return "challenger", (f"{primary} {value:.2f} vs the champion's {best:.2f}: {paired}; stays "
                                  "challenger")
        beats = f"{primary} {value:.2f} beats {best:.2f}: {paired}"
    elif gain <= 0:
        return "challenger", (f"{primary} {value:.2f}{interval} does not beat the champion's {best:.2f} "
                              f"({gain:+.2f})")
    elif interval and low <= best:
        return "challenger", (f"{primary} gain +{gain:.2f} over {best:.2f} is within the interval{interval} "
                              "(the champion kept no per-query records: not paired): stays challenger")
    elif not interval:
        beats = f"{primary} {value:.2f} beats {best:.2f} (+{gain:.2f}; no interval recorded)"
    else:
        beats = (f"{primary} {value:.2f}{interval} beats {best:.2f} beyond its interval (+{gain:.2f}; the "
                 "champion kept no per-query records: not paired)")
    regressions = {k: champion[k] - v for k, v in headline(candidate).items()
                   if k in champion and champion[k] - v > tolerance}
    if regressions:
        worst = max(regressions, key=regressions.get)
        return "challenger", (f"{primary} {value:.2f}{interval} +{gain:.2f} but {worst} drops "
                              f"{regressions[worst]:.2f} (tolerance {tolerance:.2f})")
    return "champion", f"{beats}, no regression"


def run_records(client: MlflowClient, run_id: str, benchmark: str) -> dict | None:
    """A logged run's per-query records of one benchmark, None if it kept none."""
    names = {Path(f.path).name for f in client.list_artifacts(run_id, EVAL_ARTIFACTS)}
    if f"{benchmark}{SUFFIX}" not in names:
        return None
    with tempfile.TemporaryDirectory() as tmp:
        path = client.download_artifacts(run_id, f"{EVAL_ARTIFACTS}/{benchmark}{SUFFIX}", tmp)
        return load_records(path)


def paired_between(client: MlflowClient, a: tuple[str, str], b: tuple[str, str]) -> stats.Difference | None:
    """Run A's metric − run B's metric, each given as (run id, `<family>/<benchmark>/<mode>/<metric>`), paired
    over the same queries: the modes may differ (each method scored in its own), the benchmark may not. None
    where either run kept no records or they were not scored on the same queries (another data set or
    split)."""
    (run_a, key_a), (run_b, key_b) = a, b
    benchmark = key_a.split("/")[1]
    if key_b.split("/")[1] != benchmark:
        raise ValueError(f"cannot pair {key_a} with {key_b}: different benchmarks")
    found = [run_records(client, run, benchmark) for run in (run_a, run_b)]
    if any(r is None for r in found):
        return None
    try:
        return stats.paired([outcomes(found[0], key_a.split("/", 2)[2])],
                            [outcomes(found[1], key_b.split("/", 2)[2])])
    except (RecordsError, ValueError):
        return None


def paired_difference(client: MlflowClient, candidate_run: str, champion_run: str, primary: str
                      ) -> stats.Difference | None:
    """Candidate − champion on the primary metric, paired over the same queries (`paired_between`)."""
    return paired_between(client, (candidate_run, primary), (champion_run, primary))


def promote(method: str, version: str, run_id: str, primary: str, tolerance: float) -> dict:
    """Move `champion` to this version if it wins, else give it `challenger`; record why everywhere. Not safe
    to run twice at once for one model (both could read the same champion): callers serialise it (the flow
    holds a Prefect concurrency slot per model)."""
    client = MlflowClient()
    name = registered_name(method)
    candidate = client.get_run(run_id).data.metrics
    try:
        current = client.get_model_version_by_alias(name, "champion")
    except mlflow.exceptions.MlflowException:
        current = None
    if current is not None and current.version == version:
        return {"alias": "champion", "reason": "already the champion", "version": version}
    champion_metrics = client.get_run(current.run_id).data.metrics if current else None
    difference = paired_difference(client, run_id, current.run_id, primary) if current else None
    alias, reason = decide(candidate, champion_metrics, primary, tolerance, difference)
    # The alias last: if the server goes away midway, a re-run finds no alias yet
    # and writes the whole decision.
    client.update_model_version(name, version, description=f"{alias}: {reason}")
    client.set_tag(run_id, "promotion", alias)
    client.set_tag(run_id, "promotion_reason", reason)
    client.set_registered_model_alias(name, alias, version)
    return {"alias": alias, "reason": reason, "version": version,
            "previous_champion": current.version if current else None}


# ------------------------------------------------------------------------------------------------ sweeps
TRIAL_STATUS = {"COMPLETE": "FINISHED", "PRUNED": "KILLED", "FAIL": "FAILED"}


def parent_run(experiment: str, run_name: str, match_tags: dict[str, str], params: dict[str, str],
               tags: dict[str, str] | None = None) -> str:
    """A study's or sweep's parent run, found by `match_tags` so that a resumed study keeps logging under the
    same run; created (with `match_tags`, `tags` and `params`) the first time."""
    client = MlflowClient()
    exp_id = experiment_id(experiment) or client.create_experiment(experiment)
    query = " and ".join(f"tags.{key} = '{value}'" for key, value in match_tags.items())
    runs = client.search_runs([exp_id], query)
    if runs:
        return runs[0].info.run_id
    run = client.create_run(exp_id, run_name=run_name, tags={**(tags or {}), **match_tags})
    client.log_batch(run.info.run_id, params=[Param(k, v[:6000]) for k, v in params.items()])
    return run.info.run_id


def log_trial(parent_run_id: str, study: str, trial, objectives: list[str]) -> str:
    """One nested run per finished trial: its parameters, validation curve, final metrics and state.
    Idempotent (a trial already logged is left alone), so a report can fill in trials a killed worker left."""
    client = MlflowClient()
    parent = client.get_run(parent_run_id)
    exp_id = parent.info.experiment_id
    existing = client.search_runs([exp_id],
                                  f"tags.sweep_study = '{study}' and tags.optuna_trial = '{trial.number}'")
    if existing:
        return existing[0].info.run_id
    state = trial.state.name
    run = client.create_run(exp_id, run_name=f"trial-{trial.number:03d}", tags={
        "mlflow.parentRunId": parent_run_id, "sweep_study": study, "sweep_role": "trial",
        "optuna_trial": str(trial.number), "optuna_state": state})
    run_id = run.info.run_id
    now = int(time.time() * 1000)
    metrics = [Metric(f"val/{objectives[0]}", float(v), now, int(step))
               for step, v in sorted(trial.intermediate_values.items())]
    run_dir = trial.user_attrs.get("run_dir")
    val_file = Path(run_dir) / "val_metrics.jsonl" if run_dir else None
    if val_file is not None and val_file.is_file():
        lines = [json.loads(line) for line in val_file.read_text().splitlines()]
        if lines:
            step = int(lines[-1]["step"])
            metrics += [Metric(k, float(v), now, step) for k, v in lines[-1].items() if k != "step"]
    if trial.values is not None:
        metrics += [Metric(f"objective/{name}", float(v), now, 0) for name, v in zip(objectives, trial.values,
                                                                                     strict=True)]
    params = [Param(k, json.dumps(v) if not isinstance(v, str) else v) for k, v in trial.params.items()]
    for start in range(0, max(len(metrics), 1), 1000):
        client.log_batch(run_id, metrics=metrics[start : start + 1000], params=params if start == 0 else [])
    client.set_terminated(run_id, status=TRIAL_STATUS.get(state, "FAILED"))
    return run_id


def log_study_report(parent_run_id: str, files: list[Path], metrics: dict[str, float]) -> None:
    client = MlflowClient()
    for path in files:
        client.log_artifact(parent_run_id, str(path), artifact_path="report")
    client.log_batch(parent_run_id, metrics=[Metric(k, float(v), int(time.time() * 1000), 0)
                                             for k, v in metrics.items()])
