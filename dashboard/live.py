"""The Runs page's reads: trainings followed while they run, from their run folders and from MLflow, cached
for a few seconds; pure helpers (total steps, progress, ETA) beside them. Pages only render what these return.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Mapping
from pathlib import Path

import pandas as pd
import streamlit as st
import yaml

from dashboard.data import mlflow_client, reachable

# ------------------------------------------------------------------------------------------ live runs
# What a training writes while it runs: its run folder (`metrics.jsonl`, one line per step;
# `val_metrics.jsonl`, one per validation; `config.yaml`), on the machine that trains. MLflow gets the same
# curves only when the flow logs the finished run: the Runs page reads the folders for what is live and MLflow
# for the rest.
LIVE_TTL = 5  # seconds: the Runs page refreshes about this often
STALE = 600  # seconds without a new step: a run folder that has not reached its last step is "stopped"
WINDOW = 20  # recent steps averaged for samples/s and the time per step
CURVES = ("loss/", "val/")  # the metrics a Runs page chart draws: loss terms, validation metrics


def _number(value) -> float | None:
    """A config value or an MLflow param (a string) as a number; None for null, "None" or ""."""
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def total_steps(train: Mapping[str, object], train_images: int | None = None, ranks: int = 1) -> int | None:
    """A run's last step from its `train` settings (a config's section, or MLflow params without the "train."
    prefix): epochs × steps per epoch, the latter set or samples per epoch (set, else the data's train image
    count) // (batch size × ranks), as the training loop computes it. None when that cannot be known."""
    epochs, per_epoch = _number(train.get("epochs")), _number(train.get("steps_per_epoch"))
    if per_epoch is None:
        samples = _number(train.get("samples_per_epoch")) or train_images
        batch = _number(train.get("batch_size"))
        if not samples or not batch:
            return None
        per_epoch = samples // (batch * ranks)
    return int(epochs * per_epoch) if epochs and per_epoch else None


def progress(steps: pd.DataFrame, total: int | None, window: int = WINDOW) -> dict:
    """Where a training stands, from its per-step rows (`step`, and where logged `samples_per_s` and
    `seconds`, the step's wall time): "step", "total" (None: unknown), "samples_per_s" and "seconds_per_step"
    (means over the last `window` steps; None where not logged) and "eta_seconds" (remaining steps × seconds
    per step; 0 once at the last step; None where either is unknown). Pure."""
    if steps.empty:
        return {"step": 0, "total": total, "samples_per_s": None, "seconds_per_step": None,
                "eta_seconds": None}
    recent = steps.sort_values("step").tail(window)
    step = int(recent["step"].iloc[-1])
    rate, per_step = (float(recent[c].mean()) if c in recent and recent[c].notna().any() else None
                      for c in ("samples_per_s", "seconds"))
    eta = None
    if total is not None and step >= total:
        eta = 0.0
    elif total is not None and per_step is not None:
        eta = (total - step) * per_step
    return {"step": step, "total": total, "samples_per_s": rate, "seconds_per_step": per_step,
            "eta_seconds": eta}


def duration(seconds: float | None) -> str:
    """Seconds as "1 h 02 min", "3 min 05 s" or "42 s"; "—" for None."""
    if seconds is None or math.isnan(seconds):
        return "—"
    seconds = round(seconds)
    if seconds >= 3600:
        return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"
    return f"{seconds // 60} min {seconds % 60:02d} s" if seconds >= 60 else f"{seconds} s"


def flow_run_link(prefect_ui: str, flow_run_id: str) -> str:
    return f"{prefect_ui}/runs/flow-run/{flow_run_id}" if prefect_ui else ""


def _flow_runs(folder: Path) -> list[str]:
    """The Prefect flow runs that evaluated a run folder: `pretrain-eval` evaluates into eval/<flow run id>
    ("local" when run outside Prefect), newest first. None known while the run is still training."""
    found = [p for p in (folder / "eval").glob("*") if p.is_dir() and p.name != "local"]
    return [p.name for p in sorted(found, key=lambda p: p.stat().st_mtime, reverse=True)]


def _jsonl(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    rows = []
    for line in filter(None, map(str.strip, path.read_text().splitlines())):
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:  # a line half-written as we read it
            continue
    return rows


def _train_images(shards) -> int | None:
    """The built-in training set's size, from the meta.json beside its shards (when on this machine)."""
    meta = Path(str(shards or "")).parent / "meta.json"
    return json.loads(meta.read_text()).get("counts", {}).get("train") if shards and meta.is_file() else None


def _folder_total(config: dict, steps: list[dict]) -> int | None:
    train = config.get("train", {})
    images = _train_images(train.get("shards"))
    last = steps[-1] if steps else {}
    ranks = 1  # from the logged rate, as tracking.world_size: samples_per_s = batch × ranks / seconds
    if last.get("samples_per_s") and last.get("seconds") and _number(train.get("batch_size")):
        ranks = max(1, round(last["samples_per_s"] * last["seconds"] / float(train["batch_size"])))
    return total_steps(train, images, ranks)


@st.cache_data(ttl=LIVE_TTL, show_spinner=False)
def run_folders(runs_root: Path, newest: int = 12, now: float | None = None) -> pd.DataFrame:
    """The `newest` run folders under `runs_root` (up to three levels down) by their last step written: folder
    (relative), method, state ("training": a step written in the last STALE seconds and not at its last step;
    "stopped": not at its last step, nothing new for longer; "finished"), step, total, samples/s, ETA (s; only
    while training), updated, and the Prefect flow runs that evaluated it. Empty when there is none."""
    root = Path(runs_root)
    files = [f for depth in ("*", "*/*", "*/*/*") for f in root.glob(f"{depth}/metrics.jsonl")]
    files = sorted(files, key=lambda f: f.stat().st_mtime, reverse=True)[:newest]
    now = time.time() if now is None else now
    rows = []
    for file in files:
        folder = file.parent
        config_file = folder / "config.yaml"
        config = (yaml.safe_load(config_file.read_text()) or {}) if config_file.is_file() else {}
        steps = _jsonl(file)
        state = progress(pd.DataFrame(steps), _folder_total(config, steps))
        modified = file.stat().st_mtime
        at_end = state["total"] is not None and state["step"] >= state["total"]
        training = "finished" if at_end else "training" if now - modified < STALE else "stopped"
        rows.append({"folder": str(folder.relative_to(root)), "path": str(folder),
                     "method": config.get("method", {}).get("name", ""), "state": training,
                     "step": state["step"], "total": state["total"], "samples/s": state["samples_per_s"],
                     "eta_seconds": state["eta_seconds"] if training == "training" else None,
                     "updated": pd.Timestamp(modified, unit="s"),
                     "flow_runs": _flow_runs(folder)})
    return pd.DataFrame(rows)


@st.cache_data(ttl=LIVE_TTL, show_spinner=False)
def run_folder_history(folder: Path) -> pd.DataFrame:
    """A run folder's curves in long form: metric (loss/* per step, val/<metric> per validation, samples_per_s
    and seconds per step), step, value."""
    rows = [{"metric": k, "step": int(r["step"]), "value": float(v)}
            for r in _jsonl(Path(folder) / "metrics.jsonl") for k, v in r.items()
            if k.startswith("loss/") or k in ("samples_per_s", "seconds")]
    rows += [{"metric": f"val/{k}", "step": int(r["step"]), "value": float(v)}
             for r in _jsonl(Path(folder) / "val_metrics.jsonl") for k, v in r.items() if k != "step"]
    return pd.DataFrame(rows, columns=["metric", "step", "value"])


def _params_train(params: Mapping[str, str]) -> dict[str, str]:
    return {k.removeprefix("train."): v for k, v in params.items() if k.startswith("train.")}


def _steps(client, run) -> pd.DataFrame:
    """An MLflow run's per-step rows: step (of its loss/total history) with samples_per_s and seconds."""
    logged = run.data.metrics
    loss = client.get_metric_history(run.info.run_id, "loss/total") if "loss/total" in logged else []
    steps = pd.DataFrame({"step": sorted({m.step for m in loss})}, dtype="int64")
    for key in ("samples_per_s", "seconds"):
        if key in logged:
            history = client.get_metric_history(run.info.run_id, key)
            values = pd.DataFrame({"step": [m.step for m in history], key: [m.value for m in history]})
            steps = steps.merge(values.drop_duplicates("step", keep="last"), on="step", how="left")
    return steps


def _live_row(client, run, experiments: dict[str, str], tracking_uri: str, runs_root: Path) -> dict:
    tags, params, info = run.data.tags, run.data.params, run.info
    train = _params_train(params)
    state = progress(_steps(client, run), total_steps(train, _train_images(train.get("shards"))))
    method = tags.get("method") or params.get("method.name", "")
    folder = runs_root / "flows" / f"{method}-{tags.get('run_key', '')[:12]}"  # as pretrain-eval names it
    return {"run_id": info.run_id, "run": info.run_name,
            "experiment": experiments.get(info.experiment_id, ""), "status": info.status, "method": method,
            "started": pd.Timestamp(info.start_time, unit="ms"),
            "step": state["step"], "total": state["total"], "samples/s": state["samples_per_s"],
            "eta_seconds": state["eta_seconds"] if info.status == "RUNNING" else None,
            "link": f"{tracking_uri}/#/experiments/{info.experiment_id}/runs/{info.run_id}",
            "flow_runs": _flow_runs(folder) if tags.get("run_key") else []}


@st.cache_data(ttl=LIVE_TTL, show_spinner=False)
def live_runs(tracking_uri: str, runs_root: Path, finished: int = 5) -> pd.DataFrame:
    """MLflow runs of every experiment still RUNNING, then the `finished` newest others that logged a training
    curve (loss/total): run id, run, experiment, status, method, started, step, total, samples/s, ETA (s),
    MLflow link and the Prefect flow runs that evaluated its run folder (found by its run_key tag under
    `runs_root`, where the flow trained it)."""
    def read():
        client = mlflow_client(tracking_uri)
        experiments = {e.experiment_id: e.name for e in client.search_experiments()}
        if not experiments:
            return pd.DataFrame()
        ids = list(experiments)
        running = client.search_runs(ids, "attributes.status = 'RUNNING'", max_results=100,
                                     order_by=["attributes.start_time DESC"])
        curves = client.search_runs(ids, "metrics.`loss/total` > -1e30", max_results=finished + len(running),
                                    order_by=["attributes.start_time DESC"])  # every run with a loss curve
        done = [r for r in curves if r.info.status != "RUNNING"][:finished]
        return pd.DataFrame([_live_row(client, run, experiments, tracking_uri, Path(runs_root))
                             for run in [*running, *done]])
    return reachable(read, "runs", tracking_uri)


@st.cache_data(ttl=LIVE_TTL, show_spinner=False)
def run_history(tracking_uri: str, run_id: str) -> pd.DataFrame:
    """An MLflow run's curves from its metric history in long form: metric (loss/*, val/*), step, value."""
    def read():
        client = mlflow_client(tracking_uri)
        keys = [k for k in client.get_run(run_id).data.metrics if k.startswith(CURVES)]
        rows = [{"metric": key, "step": m.step, "value": m.value} for key in keys
                for m in client.get_metric_history(run_id, key)]
        return pd.DataFrame(rows, columns=["metric", "step", "value"])
    return reachable(read, "the run's metric history", tracking_uri)
