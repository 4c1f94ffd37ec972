"""Prefect flow `sweep`: an Optuna study over FLAIR's knobs (K, sub-caption length, loss weight, ...) run by
`n_workers` worker processes against one RDB storage, each trial a shortened training run scored on the
built-in validation split; one MLflow parent run per study with a nested run per trial; a report and the
best trial's params file (`pretrain-eval` takes it as `params_file`).

    python -m flows.sweep serve --name cpu                     # serve the deployment `sweep/cpu`
    prefect deployment run 'sweep/cpu' --watch
    prefect deployment run 'sweep/cpu' -p 'overrides=["n_trials=24", "study=flair-k-24"]' --watch
    python -m flows.sweep run [--config params/sweep.yaml] [--set n_trials=4]   # once, in this process
    python -m flows.sweep worker --config params/sweep.yaml   # one more worker (another machine: PG storage)
    python -m flows.sweep report --config params/sweep.yaml   # report and best params of the study as it is
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import optuna
from prefect import flow, get_run_logger, task, unmapped
from prefect.artifacts import create_markdown_artifact
from prefect.task_runners import ThreadPoolTaskRunner

from flair_core.model_config import ConfigError
from flair_lab import tracking
from flair_lab.experiments import SWEEP_EXPERIMENT
from flair_lab.sweep_report import write_report
from flair_lab.sweeps import (
    SweepConfig,
    is_surplus,
    load_sweep_config,
    open_study,
    safe_url,
    space_signature,
    write_best_params,
)
from flows.pretrain_eval import REPO, check_services, data_version, git_commit

EXPERIMENT = SWEEP_EXPERIMENT


def worker_command(index: int, config_file: str, overrides: list[str], data_root: str,
                   parent_run_id: str | None, procs_per_trial: int) -> list[str]:
    args = ["-m", "flows.sweep", "worker", "--config", config_file, "--data-root", data_root,
            "--worker-index", str(index), *[x for o in overrides for x in ("--set", o)]]
    if parent_run_id:
        args += ["--parent-run", parent_run_id]
    if procs_per_trial > 1:  # one torchrun group per worker; rank 0 talks to Optuna
        return [sys.executable, "-m", "torch.distributed.run", "--standalone",
                f"--nproc_per_node={procs_per_trial}", *args]
    return [sys.executable, *args]


@task
def run_worker_process(index: int, config_file: str, overrides: list[str], data_root: str, parent_run_id: str,
                       config: SweepConfig) -> int:
    """One worker process; its log goes to <runs_dir>/<study>/worker-<index>.log."""
    log_path = Path(config.runs_dir) / config.study / f"worker-{index}.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    if config.threads_per_worker:
        env["OMP_NUM_THREADS"] = str(config.threads_per_worker)
    with open(log_path, "a") as log:
        code = subprocess.run(worker_command(index, config_file, overrides, data_root, parent_run_id,
                                             config.procs_per_trial), cwd=REPO, env=env, stdout=log,
                              stderr=subprocess.STDOUT, check=False).returncode
    if code != 0:
        lines = [line for line in log_path.read_text().splitlines() if line.strip()]
        raise RuntimeError(f"sweep worker {index} exited with {code}: {lines[-1] if lines else 'no output'}")
    return code


def report_and_export(config: SweepConfig, parent_run_id: str | None) -> dict:
    """Fail trials of dead workers, log any trial not yet in MLflow, write the report and the best params."""
    study = open_study(config)
    optuna.storages.fail_stale_trials(study)  # trials of killed workers: FAIL, once their heartbeat is stale
    objectives = [o.metric for o in config.objectives]
    if parent_run_id:
        for trial in study.get_trials(deepcopy=False):
            if trial.state.is_finished() and not is_surplus(trial):
                tracking.log_trial(parent_run_id, config.study, trial, objectives)
    summary, files = write_report(study, config)
    if summary["best"] is not None:
        path, _ = write_best_params(study, config, config.best_params_out)
        summary["best_params_file"] = str(path)
        files.append(path)
    if parent_run_id:
        best = {f"best/{name}": value
                for name, value in zip(objectives, (summary["best"] or {}).get("values") or [],
                                       strict=False)}
        tracking.log_study_report(parent_run_id, files, {**best, **{f"trials/{k.lower()}": v for k, v in
                                                                    summary["states"].items()}})
    return summary


def summary_markdown(summary: dict) -> str:
    best = summary["best"]
    lines = [f"## Study `{summary['study']}`", "", f"Trials: {summary['states']}", ""]
    if best:
        values = ", ".join(f"{o['metric']} = {v:.2f}" for o, v in zip(summary["objectives"], best["values"],
                                                                       strict=True))
        lines += [f"Best trial {best['number']}: {values}", "", "| setting | value |", "|---|---|"]
        lines += [f"| {k} | {v} |" for k, v in best["params"].items()]
        lines += ["", f"Params file: `{summary.get('best_params_file')}`"]
    if summary.get("separation"):
        lines += ["", f"Separation: {summary['separation']['text']}"]
    for metric, values in summary["importances"].items():
        if values:
            lines += ["",
                      f"Importances for {metric}: " + ", ".join(f"{k} {v:.2f}" for k, v in values.items())]
    return "\n".join(lines)


@flow(name="sweep", log_prints=True, task_runner=ThreadPoolTaskRunner(max_workers=16))
def sweep(config_file: str = "params/sweep.yaml", overrides: list[str] | None = None,
          experiment: str = EXPERIMENT, data_root: str = "data/builtin") -> dict:
    """Run (or resume) the study until it has its trials; report, log and export the best params."""
    logger = get_run_logger()
    check_services()
    overrides = list(overrides or [])
    config = load_sweep_config(REPO / config_file, overrides)
    study = open_study(config)  # created (or checked) once, before the workers race for it
    data_hash = data_version()
    signature = space_signature(config)
    parent = tracking.parent_run(experiment, f"sweep-{config.study}", {"sweep_study": config.study,
                                                                       "sweep_role": "study"}, {
        "space": json.dumps(signature["space"]), "objectives": json.dumps(signature["objectives"]),
        "storage": safe_url(config.storage), "n_trials": str(config.n_trials),
        "base_overrides": json.dumps(list(config.base_overrides)),
        "trial_overrides": json.dumps(list(config.trial_overrides)),
        "base_params": ",".join(config.base_params)},
        {"git_commit": git_commit(), "data_hash": data_hash})
    logger.info("study %s: %d trials so far; MLflow parent run %s", config.study, len(study.trials), parent)
    workers = run_worker_process.map(range(config.n_workers), config_file, unmapped(overrides), data_root,
                                     parent, unmapped(config))
    for future in workers:
        future.wait()
    failed = [future.state for future in workers if future.state.is_failed()]
    for state in failed:  # a dead worker fails its trial (heartbeat), the others went on: report anyway
        logger.warning("%s", state.message)
    summary = report_and_export(config, parent)
    create_markdown_artifact(key=f"sweep-{config.study}".lower().replace("_", "-").replace(".", "-"),
                             markdown=summary_markdown(summary), description=f"sweep {config.study}")
    if failed and not summary["best"]:
        raise RuntimeError(f"all {len(failed)} workers failed and no trial completed")
    return {"parent_run_id": parent, "failed_workers": len(failed),
            **{k: summary.get(k) for k in ("study", "states", "best", "importances", "separation")},
            "best_params_file": summary.get("best_params_file")}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m flows.sweep", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="serve the deployment sweep/<name> (blocks)")
    serve.add_argument("--name", default="cpu")
    for name, text in (("run", "run the sweep flow once in this process (services must be up)"),
                       ("worker", "run one worker of the study until it has n_trials finished trials"),
                       ("report", "write the report and best params of the study as it stands")):
        p = sub.add_parser(name, help=text)
        p.add_argument("--config", default="params/sweep.yaml", help="params file with a `sweep:` section")
        p.add_argument("--set", action="append", default=[], dest="overrides", metavar="KEY=VALUE",
                       help="override a sweep setting, e.g. --set n_trials=4 --set study=k-only (repeatable)")
        p.add_argument("--data-root", default="data/builtin")
        if name != "run":
            p.add_argument("--parent-run",
                           help="MLflow run id of the study (trials are logged nested under it)")
        if name == "worker":
            p.add_argument("--worker-index", type=int,
                           help="seeds this worker's sampler with seed + index (default: unseeded)")
    args = parser.parse_args(argv)
    # force: importing Prefect has configured the root logger already
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        force=True)
    try:
        if args.command == "serve":
            sweep.serve(name=args.name)
        elif args.command == "run":
            print(json.dumps(sweep(config_file=args.config, overrides=args.overrides,
                                   data_root=args.data_root),
                             indent=1, default=str))
        else:
            config = load_sweep_config(args.config, args.overrides)
            if args.command == "report":
                print(summary_markdown(report_and_export(config, args.parent_run)))
            else:
                return worker(config, args.data_root, args.parent_run, args.worker_index)
    except ConfigError as err:
        print(f"sweep {args.command}: error: {err}", file=sys.stderr)
        return 2
    return 0


def worker(config: SweepConfig, data_root: str, parent_run_id: str | None, index: int | None) -> int:
    import torch

    from flair_core.training.loop import Stopped
    from flair_lab.sweep_trials import run_worker

    if config.threads_per_worker:
        torch.set_num_threads(config.threads_per_worker)
    objectives = [o.metric for o in config.objectives]

    def log_to_mlflow(study, trial) -> None:
        if not is_surplus(trial):
            tracking.log_trial(parent_run_id, config.study, trial, objectives)

    try:
        numbers = run_worker(config, data_root, log_to_mlflow if parent_run_id else None, index)
    except Stopped as stop:
        print(f"sweep worker: {stop}; its trial is recorded as failed, a re-run continues the study",
              file=sys.stderr)
        return 128 + stop.signal
    print(f"worker finished: trials {numbers}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
