"""Every read the dashboard makes, cached; pages only render what these return.

Settings come from the environment (what `python -m services env` prints, plus FLAIR_* overrides):
MLflow from MLFLOW_TRACKING_URI, Optuna storage from FLAIR_SWEEP_STORAGE (default: the storage named in
params/sweep.yaml), the built-in data from FLAIR_DATA_ROOT. Read-only: nothing here writes to MLflow,
the registry or a study. A service that is down raises `Unavailable` with one line for the page to show.
"""

from __future__ import annotations

import io
import json
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import streamlit as st
import yaml

from flair_core.evaluation.headline import metric_key
from flair_lab import paper_numbers
from flair_lab.experiments import STUDY_EXPERIMENT

if TYPE_CHECKING:
    from PIL import Image

    from flair_core.evaluation.comparison import Table

REPO = Path(__file__).resolve().parents[1]
EXPERIMENT = os.environ.get("FLAIR_EXPERIMENT", "flair-lab")
TTL = 30  # seconds: new runs show up without a restart


class Unavailable(RuntimeError):
    """A source the page needs cannot be read (service down, nothing logged yet); the message is one line."""


@dataclass(frozen=True)
class Settings:
    tracking_uri: str
    sweep_storage: str
    data_root: Path
    paper_file: Path
    runs_root: Path  # run folders the flows train into (runs/flows/<method>-<key>, runs/<study>/<key>)
    prefect_ui: str  # "" when PREFECT_API_URL is not set


def settings() -> Settings:
    storage = os.environ.get("FLAIR_SWEEP_STORAGE")
    if not storage:
        sweep = yaml.safe_load((REPO / "params" / "sweep.yaml").read_text())["sweep"]
        storage = sweep["storage"]
        if storage.startswith("sqlite:///") and not storage.startswith("sqlite:////"):
            storage = f"sqlite:///{REPO / storage.removeprefix('sqlite:///')}"  # relative to the repo
    return Settings(tracking_uri=os.environ.get("MLFLOW_TRACKING_URI", ""), sweep_storage=storage,
                    data_root=Path(os.environ.get("FLAIR_DATA_ROOT", REPO / "data" / "builtin")),
                    paper_file=Path(os.environ.get("FLAIR_PAPER_NUMBERS", paper_numbers.PATH)),
                    runs_root=Path(os.environ.get("FLAIR_RUNS_ROOT", REPO / "runs")),
                    prefect_ui=os.environ.get("PREFECT_UI_URL")
                    or os.environ.get("PREFECT_API_URL", "").removesuffix("/").removesuffix("/api"))


def mlflow_client(tracking_uri: str):
    from mlflow import MlflowClient

    if not tracking_uri:
        raise Unavailable("MLFLOW_TRACKING_URI is not set: start the services (make services) and "
                          'eval "$(.venv/bin/python -m services env)" before starting the dashboard')
    return MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)


def reachable(call, what: str, uri: str):
    try:
        return call()
    except Unavailable:
        raise
    except Exception as err:  # noqa: BLE001 - refused connection, timeout, bad URI: all mean "unavailable" here
        line = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise Unavailable(f"cannot read {what} from {uri}: {line[:200]}") from None


# ---------------------------------------------------------------------------------------------------- runs
@st.cache_data(ttl=TTL, show_spinner="Reading runs from MLflow…")
def runs(tracking_uri: str, experiment: str = EXPERIMENT) -> pd.DataFrame:
    """One row per pretrain-eval run: method, preset, data hash and level, commit, start time, link and every
    metric. Runs logged before a tag existed have "" in its column."""
    def read():
        client = mlflow_client(tracking_uri)
        found = client.get_experiment_by_name(experiment)
        if found is None:
            return pd.DataFrame()
        rows = []
        for run in client.search_runs([found.experiment_id], "tags.method != ''", max_results=5000):
            tags, params = run.data.tags, run.data.params
            rows.append({"run_id": run.info.run_id, "run": run.info.run_name,
                         "method": tags.get("method", ""),
                         "model": params.get("train.model", ""),
                         "train_images": params.get("data.train_images", ""),
                         "image_size": params.get("data.image_size", ""),
                         "epochs": params.get("train.epochs", ""),
                         "batch_size": params.get("train.batch_size", ""),
                         "preset": tags.get("preset", ""), "data_hash": tags.get("data_hash", "")[:12],
                         "data_level": tags.get("data_level", ""),
                         "git_commit": tags.get("git_commit", "")[:12],
                         "promotion": tags.get("promotion", ""),
                         "started": pd.Timestamp(run.info.start_time, unit="ms"),
                         "link": f"{tracking_uri}/#/experiments/{found.experiment_id}/runs/{run.info.run_id}",
                         **run.data.metrics})
        return pd.DataFrame(rows)
    return reachable(read, "runs", tracking_uri)


@st.cache_data(show_spinner="Pairing runs on their per-query records…", max_entries=256)
def paired_delta(tracking_uri: str, a: tuple[str, str], b: tuple[str, str]) -> dict | None:
    """Run A's metric − run B's on the same queries (each as (run id, full metric key)), from the per-query
    records both logged: the difference in points, its 95 % interval and p-value; None where either run kept
    no records or they were scored on other queries. A finished run's records never change: no TTL."""
    from flair_lab.tracking import paired_between

    difference = reachable(lambda: paired_between(mlflow_client(tracking_uri), a, b), "per-query records",
                            tracking_uri)
    if difference is None:
        return None
    return {"value": difference.value, "low": difference.low, "high": difference.high, "p": difference.p}


def paired_deltas(tracking_uri: str, pairs: dict) -> dict:
    """`paired_delta` of every pair ({name: (a, b)}), with `p` Holm-corrected over all of them that could be
    paired (a page's family of comparisons) and `holds` where that p < 0.05; None where not paired."""
    from flair_core.evaluation.stats import LEVEL, holm

    found = {name: paired_delta(tracking_uri, a, b) for name, (a, b) in pairs.items()}
    paired = [name for name, delta in found.items() if delta is not None]
    for name, p in zip(paired, holm([found[name]["p"] for name in paired]), strict=True):
        found[name] = {**found[name], "p": p, "holds": p < 1 - LEVEL}
    return found


@st.cache_data(ttl=TTL, show_spinner="Reading the model registry…")
def registry(tracking_uri: str) -> pd.DataFrame:
    """One row per registered model version with its aliases, promotion decision and lineage."""
    def read():
        client = mlflow_client(tracking_uri)
        rows = []
        for model in client.search_registered_models(max_results=1000):
            for version in client.search_model_versions(f"name = '{model.name}'"):
                run = client.get_run(version.run_id) if version.run_id else None
                params = run.data.params if run else {}
                experiment_id = run.info.experiment_id if run else ""
                rows.append({
                    "model": model.name, "version": int(version.version),
                    # the flow tags each version with its method; older versions: their run's tag
                    "method": version.tags.get("method") or (run.data.tags.get("method", "") if run else ""),
                    "aliases": ", ".join(
                        sorted(client.get_model_version(model.name, version.version).aliases)),
                    "decision": version.description or "", "git_commit": version.tags.get("git_commit", ""),
                    "data_hash": version.tags.get("data_hash", ""),
                    "data_level": version.tags.get("data_level", ""),
                    "preset": version.tags.get("preset", ""),
                    "run_key": version.tags.get("run_key", "")[:12], "run_id": version.run_id,
                    "created": pd.Timestamp(version.creation_timestamp, unit="ms"),
                    "link": f"{tracking_uri}/#/experiments/{experiment_id}/runs/{version.run_id}",
                    "params": {k: params[k] for k in sorted(params)},
                })
        return pd.DataFrame(rows)
    return reachable(read, "the model registry", tracking_uri)


# ---------------------------------------------------------------------------------------------------- sweeps
@st.cache_data(ttl=TTL, show_spinner="Reading Optuna studies…")
def studies(storage: str) -> list[str]:
    import optuna

    def read():
        return sorted(s.study_name for s in optuna.get_all_study_summaries(storage, include_best_trial=False))
    return reachable(read, "Optuna studies", storage)


def _objectives(loaded) -> list[str]:
    """A study's objectives by the metric names the sweep recorded in its signature, else by number."""
    return [o["metric"] for o in loaded.user_attrs.get("signature", {}).get("objectives", [])] or [
        f"objective {i}" for i in range(len(loaded.directions))]


@st.cache_data(ttl=TTL, show_spinner="Reading the study…")
def study(storage: str, name: str) -> dict:
    """Trials as a table, the objectives and their directions and the best trial(s) of one study; its plots
    are `study_plots`."""
    import optuna

    def read():
        loaded = optuna.load_study(study_name=name, storage=storage)
        objectives = _objectives(loaded)
        rows = []
        for t in loaded.get_trials(deepcopy=False):
            row = {"number": t.number, "state": t.state.name, "started": t.datetime_start,
                   "finished": t.datetime_complete, "last_step": t.last_step, **t.params}
            for i, metric in enumerate(objectives):
                row[metric] = t.values[i] if t.values else (t.intermediate_values.get(t.last_step)
                                                            if i == 0 and t.last_step is not None else None)
            rows.append(row)
        complete = [t for t in loaded.trials if t.state == optuna.trial.TrialState.COMPLETE]
        best = []
        if complete:
            best = [loaded.best_trial] if len(objectives) == 1 else loaded.best_trials
        return {"trials": pd.DataFrame(rows), "objectives": objectives,
                "directions": [d.name.lower() for d in loaded.directions],
                "best": [{"number": t.number, "values": t.values, "params": t.params} for t in best]}
    return reachable(read, f"study {name}", storage)


PLOTTED, WEIGHED = 2, 4  # completed trials Optuna's plots need to say anything; fANOVA importances


@st.cache_data(ttl=TTL, show_spinner="Drawing the study's plots…")
def study_plots(storage: str, name: str, objective: int) -> dict:
    """Optuna's own plots (`optuna.visualization`, plotly figures) of one study for its objective number
    `objective`: "history" (optimization history), "importances" (fANOVA, as the sweep report), "parallel"
    (parallel coordinates), "slice" (the objective against each setting), "pareto" (the front over every
    objective, for 2 or 3 of them) and "timeline" (every trial's state over time). None where a plot does not
    apply or has too few trials to draw (under PLOTTED completed ones; no trial at all for the timeline);
    importances are a one-line reason instead when under WEIGHED trials or the evaluator fails on them."""
    import optuna
    from optuna import visualization as vis

    def read():  # every read from the storage; the plots are drawn from an in-memory copy
        loaded = optuna.load_study(study_name=name, storage=storage)
        copy = optuna.create_study(directions=loaded.directions)
        copy.add_trials(loaded.get_trials(deepcopy=False))
        return copy, _objectives(loaded)

    study, metrics = reachable(read, f"study {name}", storage)
    complete = len(study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)))
    plots = dict.fromkeys(("history", "importances", "parallel", "slice", "pareto", "timeline"))
    if study.trials:
        plots["timeline"] = vis.plot_timeline(study)
    if complete < PLOTTED:
        return plots
    # A single objective is Optuna's default target; of several, the chosen one is named explicitly.
    target = {"target": lambda t: t.values[objective]} if len(metrics) > 1 else {}
    target["target_name"] = metrics[objective]
    plots |= {"history": vis.plot_optimization_history(study, **target),
              "parallel": vis.plot_parallel_coordinate(study, **target),
              "slice": vis.plot_slice(study, **target)}
    if len(metrics) in (2, 3):
        plots["pareto"] = vis.plot_pareto_front(study, target_names=metrics)
    if complete < WEIGHED:
        plots["importances"] = (f"fANOVA importances need at least {WEIGHED} completed trials; {complete} "
                                "so far.")
    else:
        try:
            plots["importances"] = vis.plot_param_importances(
                study, evaluator=optuna.importance.FanovaImportanceEvaluator(seed=0), **target)
        except (RuntimeError, ValueError, ZeroDivisionError) as err:  # e.g. every trial scored the same
            line = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            plots["importances"] = f"fANOVA importances cannot be computed from these trials: {line}"
    return plots


# ---------------------------------------------------------------------------------------------------- paper
@st.cache_data(ttl=TTL)
def paper(path: Path) -> dict:
    """The published numbers; every table must say where it comes from (`provenance` primary or secondary)."""
    if not path.is_file():
        raise Unavailable(f"the published-numbers file {path} is missing")
    published = yaml.safe_load(path.read_text())
    for table in published.get("tables", []):
        # authors' own README or code / third party
        if table.get("provenance") not in ("primary", "secondary"):
            raise Unavailable(f"table {table.get('id', '?')} in {path.name} has provenance "
                              f"{table.get('provenance')!r}, not primary or secondary")
    return published


# ---------------------------------------------------------------------------------------------------- study
@st.cache_data(ttl=TTL, show_spinner="Reading studies from MLflow…")
def paper_studies(tracking_uri: str) -> pd.DataFrame:
    """One row per equal-budget study (its MLflow parent run, tag study_role=study), newest first: name, run
    id, start, budget, seeds, code version, link. Empty when no study has been logged (or its experiment is
    missing)."""
    def read():
        client = mlflow_client(tracking_uri)
        found = client.get_experiment_by_name(STUDY_EXPERIMENT)
        if found is None:
            return pd.DataFrame()
        rows = []
        for run in client.search_runs([found.experiment_id], "tags.study_role = 'study'", max_results=1000,
                                      order_by=["attributes.start_time DESC"]):
            params = run.data.params
            rows.append({"study": run.data.tags.get("study", run.info.run_name), "run_id": run.info.run_id,
                         "started": pd.Timestamp(run.info.start_time, unit="ms"),
                         "budget": params.get("budget", ""), "seeds": params.get("seeds", ""),
                         "code_version": params.get("code_version", ""),
                         "link": f"{tracking_uri}/#/experiments/{found.experiment_id}"
                                 f"/runs/{run.info.run_id}"})
        return pd.DataFrame(rows)
    return reachable(read, "studies", tracking_uri)


def _study_method(tags: dict, params: dict) -> str:
    """The method a nested run trained: the last `method.name=` of its overrides (an ablation such as "global
    sigmoid only" overrides FLAIR's), else its label for the methods group; "" when neither says."""
    names = [o.split("=", 1)[1] for o in params.get("overrides", "").split() if o.startswith("method.name=")]
    if names:
        return names[-1]
    return tags.get("study_label", "") if tags.get("study_group") == "methods" else ""


@st.cache_data(ttl=TTL, show_spinner="Reading the study's runs…")
def paper_study_runs(tracking_uri: str, parent_run_id: str) -> pd.DataFrame:
    """One row per nested run of a study, in the order the flow ran them: group, setting, seed, method, the
    method's own mode and its fine-grained t2i R@1 in that mode (NaN when not logged), run key and link."""
    def read():
        client = mlflow_client(tracking_uri)
        experiment_id = client.get_run(parent_run_id).info.experiment_id
        rows = []
        for run in client.search_runs([experiment_id], f"tags.mlflow.parentRunId = '{parent_run_id}'",
                                      max_results=5000, order_by=["attributes.start_time ASC"]):
            tags, metrics = run.data.tags, run.data.metrics
            method = _study_method(tags, run.data.params)
            mode = own_mode(method) if method else "global"
            fine = metric_key("retrieval", "builtin_fine_grained", mode, "t2i_r1")
            rows.append({"group": tags.get("study_group", ""), "setting": tags.get("study_label", ""),
                         "seed": int(tags["seed"]) if tags.get("seed", "").isdigit() else None,
                         "method": method, "mode": mode,
                         "fine-grained t2i R@1": metrics.get(fine, float("nan")),
                         "run_key": tags.get("run_key", "")[:12],
                         "link": f"{tracking_uri}/#/experiments/{experiment_id}/runs/{run.info.run_id}"})
        return pd.DataFrame(rows)
    return reachable(read, "the study's runs", tracking_uri)


@st.cache_data(ttl=TTL, show_spinner="Downloading the study's report…")
def paper_study_report(tracking_uri: str, parent_run_id: str) -> dict:
    """The report the flow logged to the parent run under `report/`: {"markdown": report.md's text or None
    when not logged yet, "images": {file name: PNG bytes}}. Bytes, not paths: the download is a temporary
    folder."""
    import tempfile

    import mlflow

    def read():
        client = mlflow_client(tracking_uri)
        names = {Path(f.path).name for f in client.list_artifacts(parent_run_id, "report")}
        if "report.md" not in names:  # the flow logs the report only once every run has finished
            return {"markdown": None, "images": {}}
        with tempfile.TemporaryDirectory() as tmp:
            local = Path(mlflow.artifacts.download_artifacts(run_id=parent_run_id, artifact_path="report",
                                                             dst_path=tmp, tracking_uri=tracking_uri))
            return {"markdown": (local / "report.md").read_text(),
                    "images": {p.name: p.read_bytes() for p in sorted(local.glob("*.png"))}}
    return reachable(read, "the study's report", tracking_uri)


# ---------------------------------------------------------------------------------------------------- inspect
@st.cache_data(ttl=TTL)
def test_images(data_root: Path, limit: int = 64) -> list[dict]:
    """The first built-in test images: key, PNG bytes and sentences."""
    import webdataset as wds

    shards = sorted(str(p) for p in (Path(data_root) / "test").glob("*.tar"))
    if not shards:
        raise Unavailable(f"no built-in test shards in {data_root}/test: run `flair prepare` (or the main "
                          "job)")
    out = []
    for sample in wds.WebDataset(shards, shardshuffle=False, empty_check=False, nodesplitter=None,
                                 workersplitter=None):
        out.append({"key": sample["__key__"], "png": sample["png"],
                    "sentences": json.loads(sample["json"])["sentences"]})
        if len(out) == limit:
            break
    return out


@st.cache_resource(show_spinner="Loading the model from the registry…", max_entries=4)
def model(tracking_uri: str, name: str, version: int):
    """A registered version's model, from the checkpoint its run logged."""
    import mlflow

    from flair_core.models import load_trained

    client = mlflow_client(tracking_uri)
    run_id = reachable(lambda: client.get_model_version(name, str(version)).run_id, f"{name} v{version}",
                        tracking_uri)
    local = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path="checkpoint",
                                                tracking_uri=tracking_uri)
    files = sorted(Path(local).glob("*.pt"))
    if not files:
        raise Unavailable(f"{name} v{version}: its run logged no checkpoint")
    return load_trained(files[-1])


def logged_metrics(run: pd.Series) -> dict[str, float]:
    """A `runs()` row's metrics (`<family>/...` keys) that the run logged, for `comparison.main_table`."""
    return {k: v for k, v in run.items() if "/" in k and isinstance(v, float) and not pd.isna(v)}


# ------------------------------------------------------------------------------------------ side by side
HOLDS_CHANCE, EXCLUDES_CHANCE = "interval holds chance", "interval excludes chance"
NO_INTERVAL = "no interval"


def uncertainty_frame(table: Table, labels: Mapping[str, str]) -> pd.DataFrame:
    """The main table (`comparison.main_table`) in long form for a chart, one row per run and metric it
    logged, runs in the table's order and metrics in its column order: method (`labels[run]`), metric (the
    column's label), value, the 95 % interval's low and high, chance and majority-class levels (NaN where
    not recorded), `at_chance` (the interval holds chance: the value is no better than a random ranking or
    class) and `reading` (HOLDS_CHANCE, EXCLUDES_CHANCE or NO_INTERVAL, for the chart's legend)."""
    rows = []
    for run in table.runs:
        for column in table.columns:
            value = table.value(run, column.key)
            if value is None:
                continue
            low, high, chance, majority = (math.nan if x is None else x for x in table.noise(run, column.key))
            known = not any(math.isnan(x) for x in (low, high, chance))
            at_chance = known and low <= chance <= high
            reading = (HOLDS_CHANCE if at_chance else EXCLUDES_CHANCE) if known else NO_INTERVAL
            rows.append({"method": labels[run], "metric": column.label, "value": value, "low": low,
                         "high": high, "chance": chance, "majority": majority, "at_chance": at_chance,
                         "reading": reading})
    return pd.DataFrame(rows, columns=["method", "metric", "value", "low", "high", "chance", "majority",
                                       "at_chance", "reading"])


# ------------------------------------------------------------------------------------------ fact types
# What `flair evaluate` writes for the built-in fine-grained set (flair_core/evaluation/diagnostics.py):
# R@1 by the query's fact type and minimal-pair accuracy by what the twin changed.
FACT_TYPES = ("object", "relation", "merged")
PAIR_CHANGES = ("shape", "colour", "size", "pattern", "swap_colours", "swap_positions")
NOT_MEASURED = "not measured"
GREY = "background-color: #eeeeee; color: #8a8a8a"


def fact_type_columns() -> dict[str, str]:
    """{label: metric name after the mode}: R@1 per fact type, then minimal-pair accuracy by change."""
    from flair_core.evaluation.diagnostics import BY_FACT, MINIMAL_PAIR  # the names evaluate writes

    return ({f"R@1 {kind}": f"{BY_FACT}/{kind}" for kind in FACT_TYPES}
            | {"pairs, all": MINIMAL_PAIR} | {f"pairs {c}": f"{MINIMAL_PAIR}/{c}" for c in PAIR_CHANGES})


def fact_type_table(runs: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Runs (`runs()` rows) × fact types, each run in its method's own mode: (cells, CSS). A cell reads
    "value [low, high] · chance c"; green by how far its interval's low end is above chance (red when wholly
    below), grey where the interval holds chance, "not measured" where the run logged no such metric (runs
    older than the diagnostics)."""
    from flair_core.evaluation import CHANCE, CI_HIGH, CI_LOW

    cells, styles = {}, {}
    for _, run in runs.iterrows():
        label = f"{run['method']} · {run['run']}"
        cells[label], styles[label] = {}, {}
        for column, name in fact_type_columns().items():
            key = metric_key("retrieval", "builtin_fine_grained", own_mode(run["method"]), name)
            value, low, high, chance = (run.get(key + suffix) for suffix in ("", CI_LOW, CI_HIGH, CHANCE))
            if any(x is None or pd.isna(x) for x in (value, low, high, chance)):
                cells[label][column], styles[label][column] = NOT_MEASURED, "color: #8a8a8a"
                continue
            cells[label][column] = f"{value:.2f} [{low:.2f}, {high:.2f}] · chance {chance:.2f}"
            if low <= chance <= high:
                styles[label][column] = GREY
            elif high < chance:  # reliably below chance (e.g. prefers the twin)
                styles[label][column] = "background-color: rgba(179, 38, 30, 0.25)"
            else:  # 0 at chance, 1 at a perfect score: the share of the headroom above chance
                above = min(max((low - chance) / max(100 - chance, 1e-9), 0.0), 1.0)
                styles[label][column] = f"background-color: rgba(10, 125, 50, {0.15 + 0.6 * above:.2f})"
    return pd.DataFrame.from_dict(cells, orient="index"), pd.DataFrame.from_dict(styles, orient="index")


def is_baseline(method: str) -> bool:
    """Whether the registry calls the method a baseline; a method this code does not know counts as one."""
    from flair_core import METHODS

    return METHODS[method].baseline if method in METHODS else True


def own_modes_text() -> str:
    from flair_core.methods import own_modes_text  # lazily: the registry imports torch

    return own_modes_text()


def own_mode(method: str) -> str:
    """The method's own retrieval mode; runs of a method this code does not know are shown in global mode."""
    from flair_core import METHODS

    return METHODS[method].primary_mode if method in METHODS else "global"


def image(raw: bytes, what: str) -> Image.Image:
    """Image bytes (a built-in PNG or an upload, which is untrusted) as RGB, checked before any pixel is
    decoded: a DataError whose one line names `what` when they are not a usable image."""
    from flair_core.data.files import image_from_bytes

    return image_from_bytes(raw, what)


@st.cache_resource(show_spinner="Encoding the test images…", max_entries=4)
def gallery(tracking_uri: str, name: str, version: int, data_root: Path, limit: int) -> dict:
    """The first `limit` built-in test images embedded once under one model, for ranking against captions."""
    from flair_core import embed_images

    return embed_images(model(tracking_uri, name, version),
                        [image(x["png"], f"built-in test image {x['key']}")
                         for x in test_images(data_root, limit)])


def caption_ranks(tracking_uri: str, name: str, version: int, data_root: Path, limit: int, caption: str,
                  upload: Image.Image | None = None) -> pd.DataFrame:
    """Every gallery image (and the upload, an RGB image already checked by `image`, if any) ranked for the
    caption in the method's own scoring mode."""
    import torch

    from flair_core import embed_images, rank_images

    net = model(tracking_uri, name, version)
    images = dict(gallery(tracking_uri, name, version, data_root, limit))
    keys = [x["key"] for x in test_images(data_root, limit)]
    if upload is not None:
        extra = embed_images(net, [upload])
        images = {k: torch.cat([v, extra[k]]) for k, v in images.items()}
        keys.append("upload")
    _, scores = rank_images(net, [caption], images)
    values = scores[0]
    # rank 1 = best; ties count against the image, as in the retrieval metrics
    ranks = (values[None, :] >= values[:, None]).sum(1)
    table = pd.DataFrame({"image": keys, "score": values.tolist(), "rank": ranks.tolist()})
    return table.sort_values(["rank", "image"]).reset_index(drop=True)


def attention_overlay(tracking_uri: str, name: str, version: int, rgb: Image.Image,
                      caption: str) -> tuple[bytes, float]:
    """The text-conditioned attention of the caption over an RGB image (checked by `image`) as a PNG overlay,
    and the zero-slot mass."""
    from PIL import Image

    from flair_core import get_tokenizer, get_transform
    from flair_core.evaluation.attention import attention_maps, overlay

    net = model(tracking_uri, name, version)
    maps, zero = attention_maps(net, get_tokenizer(net.config), get_transform(net.config, False)(rgb),
                                [caption])
    out = io.BytesIO()
    factor = max(1, 256 // min(rgb.size))  # small synthetic images: scaled up, pixels kept sharp
    overlay(rgb.resize((rgb.width * factor, rgb.height * factor), Image.NEAREST), maps[0]).save(out, "PNG")
    return out.getvalue(), float(zero[0])


@st.cache_data(show_spinner=False, max_entries=512)
def thumbnail(tracking_uri: str, name: str, version: int, raw: bytes, what: str,
              caption: str | None = None) -> bytes:
    """One image (bytes: a built-in PNG or an upload, checked by `image`) as a PNG scaled up to about 256 px
    with sharp pixels; with `caption`, that caption's text-conditioned attention overlaid (FLAIR-family
    methods only: the caller asks for it where the method has an attention mode)."""
    from PIL import Image

    rgb = image(raw, what)
    if caption is not None:
        return attention_overlay(tracking_uri, name, version, rgb, caption)[0]
    out = io.BytesIO()
    factor = max(1, 256 // min(rgb.size))
    rgb.resize((rgb.width * factor, rgb.height * factor), Image.NEAREST).save(out, "PNG")
    return out.getvalue()


# ------------------------------------------------------------------------------------------ disagreements
BENCHMARK = "builtin_fine_grained"  # the built-in set whose per-query records Inspect compares


@st.cache_data(ttl=TTL, show_spinner="Reading the built-in test queries…")
def builtin_queries(data_root: Path, family: str = "fine_grained") -> dict:
    """One built-in query set of the test split (`test_queries.json`, as `flair prepare` wrote it), indexed
    as the per-query records index it: "texts", each text's "source" image key and its "positives" (the keys
    of every image its facts hold for)."""
    path = Path(data_root) / "test_queries.json"
    if not path.is_file():
        raise Unavailable(f"no {path}: run `flair prepare` (or the main job)")
    queries = json.loads(path.read_text())
    keys, chosen = queries["images"], queries["sets"][family]
    return {"texts": chosen["texts"], "source": [keys[i] for i in chosen["source"]],
            "positives": [[keys[i] for i in p] for p in chosen["positives"]]}


@st.cache_data(ttl=TTL, show_spinner=False)
def true_images(data_root: Path, caption: str) -> frozenset[str]:
    """The built-in test images a caption is true of, where the caption is one of the test split's queries
    (any set; a text may be listed several times, with the same facts): the keys of its positives. Empty for
    any other caption: then only the image the user picked counts as true."""
    path = Path(data_root) / "test_queries.json"
    if not path.is_file():
        return frozenset()
    queries = json.loads(path.read_text())
    keys = queries["images"]
    return frozenset(keys[i] for chosen in queries["sets"].values()
                     for text, positives in zip(chosen["texts"], chosen["positives"], strict=True)
                     if text == caption for i in positives)


@st.cache_data(show_spinner="Reading the per-query records…", max_entries=64)
def query_records(tracking_uri: str, run_id: str, benchmark: str = BENCHMARK) -> dict | None:
    """A run's per-query records of one benchmark (`eval/<benchmark>.queries.npz`), None when it kept none. A
    finished run's records never change: no TTL."""
    from flair_lab.tracking import run_records

    return reachable(lambda: run_records(mlflow_client(tracking_uri), run_id, benchmark), "per-query records",
                      tracking_uri)


def disagreements(a: Mapping[str, np.ndarray], mode_a: str, b: Mapping[str, np.ndarray], mode_b: str,
                  direction: str = "t2i") -> pd.DataFrame:
    """The queries one model ranks a true image first for and the other does not, from two runs' per-query
    records (`flair_core.evaluation.records`) of the same benchmark, each read in its own scoring mode:
    one row per such query, ordered by query within "a" then "b" — `query` (the index the records give),
    `first` ("a" or "b": which model has it at rank 1), `rank_a` and `rank_b` (1-based rank of the query's
    best true image under each). Pure. Raises ValueError when the records lack the mode or were not scored
    on the same queries."""
    def ranked(records: Mapping[str, np.ndarray], mode: str, which: str) -> pd.Series:
        names = (f"{direction}/query", f"{mode}/{direction}/rank")
        missing = [n for n in names if n not in records]
        if missing:
            raise ValueError(f"model {which}'s records have no {missing[0]!r}")
        return pd.Series(np.asarray(records[names[1]]), index=np.asarray(records[names[0]])).sort_index()

    rank_a, rank_b = ranked(a, mode_a, "a"), ranked(b, mode_b, "b")
    if not rank_a.index.equals(rank_b.index):
        raise ValueError("the two runs' records were not scored on the same queries (another data set or "
                         "split)")
    hit_a, hit_b = rank_a.to_numpy() == 0, rank_b.to_numpy() == 0  # rank 0 = the first place
    split = hit_a != hit_b
    found = pd.DataFrame({"query": rank_a.index[split], "first": np.where(hit_a[split], "a", "b"),
                          "rank_a": rank_a.to_numpy()[split] + 1, "rank_b": rank_b.to_numpy()[split] + 1})
    return found.sort_values(["first", "query"], kind="stable").reset_index(drop=True)


def or_stop(read, *args):
    """Call a loader; when its source is unavailable show the one-line reason and end the page there."""
    try:
        return read(*args)
    except Unavailable as err:
        st.warning(str(err), icon=":material/cloud_off:")
        st.stop()
