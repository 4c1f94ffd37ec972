"""Prefect flow `study`: the equal-budget study of FLAIR against its baselines, with the paper's ablations.

Every method × data seed, and FLAIR with one setting changed (loss components, K, sub-caption length), each
trained at the same budget and evaluated on every built-in benchmark through the `flair` CLI; one MLflow
parent run per study with a nested run per configuration and seed; then the report
(flair_lab/equal_budget_report.py).

    python -m flows.equal_budget_study run [--quick] [--config params/study.yaml]  # run or resume, and report
    python -m flows.equal_budget_study serve --name cpu                            # the deployment study/cpu
    python -m flows.equal_budget_study report [--quick]                            # the report so far

A run is cached by its resolved config and the library's code version (its folder is named by that key):
an interrupted study continues where it stopped and a finished run is never redone.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import yaml
from mlflow import MlflowClient
from mlflow.entities import Metric, Param
from prefect import flow, get_run_logger, task
from pydantic import Field

from flair_core.model_config import ConfigError, Frozen
from flair_core.run_config import RunConfig, merged_params, read_yaml, validate
from flair_lab import tracking
from flair_lab.experiments import STUDY_EXPERIMENT
from flows.pretrain_eval import FLAIR, REPO, check_services, evaluate_missing, run_command


class StudyConfig(Frozen):
    name: str
    base_params: tuple[str, ...]
    budget: tuple[str, ...] = Field(description="overrides every run shares: the equal training budget")
    seeds: tuple[int, ...] = Field(min_length=1)
    methods: tuple[str, ...] = ()
    ablation_seeds: tuple[int, ...] = (0,)
    # group -> label -> overrides
    ablations: dict[str, dict[str, tuple[str, ...]]] = Field(default_factory=dict)
    benchmarks: tuple[str, ...] = ("builtin_fine_grained", "builtin_long", "builtin_standard",
                                   "builtin_segmentation", "builtin_classification")
    data_root: str = "data/study"
    runs_dir: str = "runs/study"
    report_dir: str = "docs/study"
    sweep_file: str = Field("params/sweep.yaml",
                            description="the sweep whose search space (K, length, w) the report's "
                                        "two-objective Optuna study over FLAIR's configurations uses")


@dataclass(frozen=True)
class Run:
    group: str  # "methods" or an ablation group
    label: str  # the method name or the ablation's label
    seed: int
    overrides: tuple[str, ...]


def load_study_config(path: str | Path, quick: bool = False) -> StudyConfig:
    data = read_yaml(path)
    section = dict(data.get("study") or {})
    if quick:
        section.update(data.get("quick") or {})
    return validate(StudyConfig, section, str(path), prefix="quick" if quick else "study")


def planned_runs(config: StudyConfig) -> list[Run]:
    runs = [Run("methods", m, s, (f"method.name={m}",)) for s in config.seeds for m in config.methods]
    for group, rows in config.ablations.items():
        runs += [Run(group, label, s, ("method.name=flair", *overrides)) for label, overrides in rows.items()
                 for s in config.ablation_seeds]
    return runs


def code_version() -> str:
    """The git trees of the library and its CLI, plus a hash of uncommitted changes to them: what a cached
    result depends on."""
    trees = subprocess.run(["git", "rev-parse", "HEAD:flair_core", "HEAD:flair_cli"], cwd=REPO,
                           capture_output=True, text=True, check=False).stdout.split()
    tree = "+".join(trees) if len(trees) == 2 else "unknown"
    diff = subprocess.run(["git", "diff", "HEAD", "--", "flair_core", "flair_cli"], cwd=REPO,
                          capture_output=True, check=False).stdout
    return tree + (f"+{hashlib.sha256(diff).hexdigest()[:12]}" if diff else "")


def data_dir(config: StudyConfig, seed: int, code: str) -> Path:
    data = merged_params(list(config.base_params), [f"data.seed={seed}"])["data"]
    key = hashlib.sha256(json.dumps([data, code], sort_keys=True).encode()).hexdigest()[:10]
    return REPO / config.data_root / f"seed{seed}-{key}"


def resolved(config: StudyConfig, run: Run, data: Path) -> dict:
    """The run's complete params (validated): base files, its method's recipe, the budget, its overrides."""
    overrides = [*config.budget, *run.overrides, f"train.seed={run.seed}", f"train.shards={data}/train"]
    params = merged_params(list(config.base_params), overrides)
    validate(RunConfig, params, f"study {config.name}: {run.group}/{run.label}")
    return params


def run_key(params: dict, benchmarks: tuple[str, ...], code: str) -> str:
    return hashlib.sha256(json.dumps([params, list(benchmarks), code], sort_keys=True).encode()).hexdigest()


@task
def prepare(config: StudyConfig, seed: int, out: Path) -> str:
    """The built-in data of one seed, generated once (`flair prepare` replaces the folder atomically)."""
    if not (out / "meta.json").is_file():
        params = [x for p in config.base_params for x in ("--params", p)]
        run_command([*FLAIR, "prepare", *params, "--set", f"seed={seed}", "--out", str(out)],
                    f"data seed {seed}")
    return str(out)


@task
def train_and_evaluate(config: StudyConfig, params: dict, out: Path, data: Path) -> dict[str, float]:
    """`flair train --resume auto` (a finished run returns at once), then every benchmark not yet
    evaluated."""
    # A finished run is not even restarted.
    if not all((out / "eval" / f"{b}.json").is_file() for b in config.benchmarks):
        _train(params, out)
    return evaluate_missing(out, list(config.benchmarks), data, out / "eval")


def _train(params: dict, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    params_file = out / "params.yaml"
    if not params_file.is_file():
        params_file.write_text(yaml.safe_dump(params, sort_keys=False))
    run_command([*FLAIR, "train", "--params", str(params_file), "--out", str(out), "--resume", "auto"],
                f"training {out.name}")


def log_run(parent: str, config: StudyConfig, run: Run, key: str, out: Path,
            metrics: dict[str, float]) -> None:
    """One nested run per configuration and seed (idempotent: found by its study, group, label and seed)."""
    client = MlflowClient()
    exp_id = client.get_run(parent).info.experiment_id
    tags = {"study": config.name, "study_role": "run", "study_group": run.group, "study_label": run.label,
            "seed": str(run.seed), "run_key": key, "mlflow.parentRunId": parent}
    query = " and ".join(f"tags.{k} = '{v}'" for k, v in tags.items()
                         if k in ("study", "study_group", "seed"))
    if any(r.data.tags.get("study_label") == run.label for r in client.search_runs([exp_id], query)):
        return
    mlflow_run = client.create_run(exp_id, run_name=f"{run.group}/{run.label}/seed{run.seed}", tags=tags)
    now = int(time.time() * 1000)
    logged = [Metric(k, float(v), now, 0) for k, v in metrics.items() if isinstance(v, int | float)]
    validations = out / "val_metrics.jsonl"
    if validations.is_file():
        for line in validations.read_text().splitlines():
            values = json.loads(line)
            logged += [Metric(f"val/{k}", float(v), now, int(values["step"])) for k, v in values.items()
                       if k.endswith("t2i_r1") and "strict" not in k]
    params = [Param("overrides", " ".join(run.overrides)[:6000]), Param("run_dir", str(out))]
    for start in range(0, max(len(logged), 1), 1000):
        client.log_batch(mlflow_run.info.run_id, metrics=logged[start : start + 1000],
                         params=params if start == 0 else [])
    client.set_terminated(mlflow_run.info.run_id)


@flow(name="study", log_prints=True)
def study(config_file: str = "params/study.yaml", quick: bool = False) -> dict:
    """Run (or resume) every planned run of the study, log them, and write the report."""
    from flair_lab.equal_budget_report import write_report

    logger = get_run_logger()
    check_services()
    config = load_study_config(REPO / config_file, quick)
    code = code_version()
    parent = tracking.parent_run(STUDY_EXPERIMENT, f"study-{config.name}",
                                 {"study": config.name, "study_role": "study"},
                                 {"budget": " ".join(config.budget), "seeds": json.dumps(list(config.seeds)),
                                  "code_version": code})
    done: dict[str, Path] = {}
    failed: list[str] = []
    plan = planned_runs(config)
    for number, run in enumerate(plan, 1):
        data = data_dir(config, run.seed, code)
        params = resolved(config, run, data)
        key = run_key(params, config.benchmarks, code)
        out = REPO / config.runs_dir / config.name / key[:12]
        prepare(config, run.seed, data)
        start = time.perf_counter()
        try:
            metrics = train_and_evaluate(config, params, out, data)  # cached runs return at once
        except RuntimeError as err:  # one broken run must not cost the others: report it at the end
            failed.append(f"{run.group}/{run.label} seed {run.seed}: {err}")
            logger.warning("%d/%d %s", number, len(plan), failed[-1])
            continue
        logger.info("%d/%d %s/%s seed %d: %s in %.0f s", number, len(plan), run.group, run.label, run.seed,
                    out.name, time.perf_counter() - start)
        done[key] = out
        record_run(out, config, run, key)
        log_run(parent, config, run, key, out, metrics)
    files = write_report(config, REPO / config.report_dir)
    tracking.log_study_report(parent, files, {})
    if failed:  # the report holds what finished; a re-run retries only what failed or is missing
        raise RuntimeError(f"{len(failed)} of {len(plan)} runs failed, the first: {failed[0]}")
    return {"study": config.name, "runs": len(plan), "unique_runs": len(done), "parent_run_id": parent,
            "report": [str(p) for p in files]}


def record_run(out: Path, config: StudyConfig, run: Run, key: str) -> None:
    """`study.json` in the run folder: every (group, label, seed) of the study this cached run stands for."""
    path = out / "study.json"
    entries = json.loads(path.read_text()) if path.is_file() else []
    entry = {"study": config.name, "group": run.group, "label": run.label, "seed": run.seed, "key": key}
    if entry not in entries:
        path.write_text(json.dumps([*entries, entry], indent=1))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m flows.equal_budget_study", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="serve the deployment study/<name> (blocks)")
    serve.add_argument("--name", default="cpu")
    for name, text in (("run", "run or resume the study in this process, then report"),
                       ("report", "write the report of the runs finished so far")):
        p = sub.add_parser(name, help=text)
        p.add_argument("--config", default="params/study.yaml")
        p.add_argument("--quick", action="store_true",
                       help="the tiny variant (minutes): the `quick:` section")
    args = parser.parse_args(argv)
    try:
        if args.command == "serve":
            study.serve(name=args.name)
        elif args.command == "run":
            print(json.dumps(study(config_file=args.config, quick=args.quick), indent=1))
        else:
            from flair_lab.equal_budget_report import write_report

            config = load_study_config(REPO / args.config, args.quick)
            for path in write_report(config, REPO / config.report_dir):
                print(f"wrote {path}")
    except (ConfigError, RuntimeError) as err:
        print(f"python -m flows.equal_budget_study {args.command}: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
