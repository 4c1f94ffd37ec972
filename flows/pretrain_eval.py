"""Prefect flow `pretrain-eval`: data version (DVC) → training (torchrun) → evaluation on every benchmark
(one task, one process) → MLflow logging and registration → promotion. Every task runs the `flair` CLI or
calls the MLflow adapter; nothing here computes a result itself.

    python -m flows.pretrain_eval serve --name cpu        # serve the deployment `pretrain-eval/cpu`
    prefect deployment run 'pretrain-eval/cpu' -p method=clip --watch
    python -m flows.pretrain_eval run --method flair      # one run in-process, without a deployment
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import yaml
from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import INPUTS
from prefect.client.orchestration import get_client
from prefect.concurrency.sync import concurrency
from prefect.exceptions import ObjectAlreadyExists
from prefect.runtime import flow_run
from prefect.task_runners import ThreadPoolTaskRunner

from flair_cli.processes import run_tree
from flair_core.data.registry import benchmark_names
from flair_core.evaluation.comparison import format_cell, noise_of
from flair_core.evaluation.headline import headline, promotion_metric
from flair_core.evaluation.records import records_path
from flair_core.methods import get_method
from flair_core.run_config import read_run_config
from flair_lab import tracking

REPO = Path(__file__).resolve().parents[1]
FLAIR = [sys.executable, "-m", "flair_cli"]
# every family, built-in data
BENCHMARKS = benchmark_names(builtin=True)


def run_command(command: list[str], what: str, threads: int | None = None) -> str:
    """Run a CLI step in the repo; a failure raises with the step's own last error line."""
    # DVC stages call `flair`: the interpreter's scripts folder must be on PATH whoever started us.
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    if threads:  # concurrent evaluations share the cores instead of oversubscribing them
        env["OMP_NUM_THREADS"] = str(threads)
    # Its whole process tree (torchrun's workers and their loader workers included) ends with the task: when
    # the flow run is stopped or cancelled, and when its process is killed outright.
    result = run_tree(command, cwd=REPO, env=env)
    if result.returncode != 0:
        lines = [line for line in (result.stderr or result.stdout).splitlines() if line.strip()]
        raise RuntimeError(f"{what} failed (exit {result.returncode}): {lines[-1] if lines else 'no output'}")
    return result.stdout


def git_commit() -> str:
    result = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True,
                            check=False)
    dirty = subprocess.run(["git", "status", "--porcelain", "flair_core", "flair_cli"], cwd=REPO,
                           capture_output=True, text=True, check=False).stdout.strip()
    return (result.stdout.strip() or "unknown") + ("-dirty" if dirty else "")


@task(retries=1, retry_delay_seconds=5)
def data_version() -> str:
    """Reproduce (or find up to date) the DVC `prepare` stage; its output hash versions the data."""
    # Flow runs side by side share the repo: one prepares, the others wait and then find it up to date. DVC
    # waits for its repo lock (--wait-for-lock) but not for the lock on the stage's output, which a running
    # `prepare` holds: that refusal is retried here for as long as a preparation can take.
    deadline = time.monotonic() + 900
    while True:
        try:
            run_command([sys.executable, "-m", "dvc", "--wait-for-lock", "repro", "prepare"],
                        "dvc repro prepare")
            break
        except RuntimeError as err:
            if "rwlock" not in str(err) or time.monotonic() > deadline:
                raise
            time.sleep(2)
    lock = yaml.safe_load((REPO / "dvc.lock").read_text())
    return lock["stages"]["prepare"]["outs"][0]["md5"]


@task(cache_policy=INPUTS, persist_result=True)
def train(method: str, params_file: str, overrides: list[str], run_key: str, nodes: int,
          procs_per_node: int, threads: int | None = None) -> str:
    """torchrun over `flair train`; cached on the run key (data hash + params + code), and `--resume auto`
    makes a finished run return at once even without the cache. `threads`: intra-op threads per process."""
    out = REPO / "runs" / "flows" / f"{method}-{run_key[:12]}"
    train_args = ["-m", "flair_cli", "train", "--params", params_file, "--set", f"method.name={method}",
                  *[x for o in overrides for x in ("--set", o)], "--out", str(out), "--resume", "auto"]
    if nodes == 1:
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
                   f"--nproc_per_node={procs_per_node}", *train_args]
        run_command(command, f"training {method}", threads=threads)
    else:  # several "nodes" on this machine, joined by a c10d rendezvous on loopback
        port = 29400 + int(run_key[:4], 16) % 1000
        agents = [subprocess.Popen([sys.executable, "-m", "torch.distributed.run", f"--nnodes={nodes}",
                                    f"--nproc_per_node={procs_per_node}", f"--node_rank={rank}",
                                    "--rdzv_backend=c10d", f"--rdzv_endpoint=127.0.0.1:{port}",
                                    f"--rdzv_id={run_key[:12]}", *train_args], cwd=REPO)
                  for rank in range(nodes)]
        if any(agent.wait() != 0 for agent in agents):
            raise RuntimeError(f"training {method} failed on one of {nodes} nodes")
    return str(out)


def evaluate_missing(run_dir: str | Path, benchmarks: list[str], data_root: str | Path, out_dir: str | Path,
                     threads: int | None = None) -> dict[str, float]:
    """Every benchmark not yet in `out_dir` in one `flair evaluate` process (one start-up, ~4.5 s of imports,
    and one model load for all), then the metrics of all of them. Each result (`<benchmark>.json` and its
    per-query records) is written when done, so a run interrupted half-way continues with the ones still
    missing."""
    results = {benchmark: Path(out_dir) / f"{benchmark}.json" for benchmark in benchmarks}
    # A result without its per-query records (evaluated before they were kept) is evaluated again.
    todo = [benchmark for benchmark, result in results.items()
            if not (result.is_file() and records_path(out_dir, benchmark).is_file())]
    if todo:
        run_command([*FLAIR, "evaluate", str(run_dir), *(x for b in todo for x in ("--benchmark", b)),
                     "--root", str(data_root), "--out-dir", str(out_dir)],
                    f"evaluating {Path(run_dir).name} on {', '.join(todo)}", threads=threads)
    metrics: dict[str, float] = {}
    for result in results.values():
        metrics.update(json.loads(result.read_text()))
    return metrics


@task(retries=2, retry_delay_seconds=3)
def evaluate(run_dir: str, benchmarks: list[str], data_root: str, threads: int | None, out_dir: str
             ) -> dict[str, float]:
    """Every benchmark in one process; a retry evaluates only what is still missing."""
    return evaluate_missing(run_dir, benchmarks, data_root, out_dir, threads)


@task
def attention_pngs(run_dir: str, data_root: str, count: int = 2) -> list[str]:
    """Text-conditioned attention maps of a few test images with one of their sentences (FLAIR only)."""
    out = Path(run_dir) / "attention"
    run_command([*FLAIR, "attention", run_dir, "--root", data_root, "--count", str(count), "--out", str(out)],
                "attention maps")
    return [str(p) for p in sorted(out.glob("*.png"))] if out.is_dir() else []


@task(retries=2, retry_delay_seconds=5)
def log_and_register(run_dir: str, method: str, metrics: dict, tags: dict, experiment: str,
                     pngs: list[str], eval_dir: str) -> tuple[str, str]:
    return tracking.log_training_run(Path(run_dir), method, metrics, tags, experiment,
                                     [Path(p) for p in pngs], Path(eval_dir))


@task(retries=2, retry_delay_seconds=5)
def promote(method: str, version: str, run_id: str, primary: str, tolerance: float) -> dict:
    # One promotion per model at a time, across flow runs and machines: two runs of the same method that both
    # read "no champion yet" would otherwise both take the title.
    with concurrency(promotion_lock(method), occupy=1, strict=True, timeout_seconds=600):
        return tracking.promote(method, version, run_id, primary, tolerance)


def promotion_lock(method: str) -> str:
    """The one-slot Prefect global concurrency limit that serialises promotions of `method`'s model."""
    name = f"promote-{tracking.registered_name(method)}"
    # a concurrent run made it
    with get_client(sync_client=True) as client, contextlib.suppress(ObjectAlreadyExists):
        client.upsert_global_concurrency_limit_by_name(name, 1)
    return name


def check_services() -> None:
    from services.stack import check_up

    problems = check_up(dict(os.environ))
    if problems:
        raise RuntimeError(problems[0])


@flow(name="pretrain-eval", log_prints=True,
      task_runner=ThreadPoolTaskRunner(max_workers=os.cpu_count() or 1))
def pretrain_eval(method: str = "flair", params_file: str = "params/cpu.yaml",
                  overrides: list[str] | None = None, benchmarks: list[str] | None = None, nodes: int = 1,
                  procs_per_node: int = 1, experiment: str = "flair-lab", primary_metric: str | None = None,
                  regression_tolerance: float = 2.0, data_root: str = "data/builtin",
                  threads: int | None = None) -> dict:
    """Train one method on the built-in data, evaluate it on every benchmark, log, register and promote.

    `threads`: intra-op threads of the training (None: all cores). Flow runs side by side on one machine give
    each its share of the cores (the main job runs two at a time with one thread each on 2 cores)."""
    logger = get_run_logger()
    started = time.perf_counter()
    check_services()
    overrides = list(overrides or [])
    benchmarks = list(benchmarks or BENCHMARKS)
    data_hash = data_version()
    params_text = (REPO / params_file).read_text()
    commit = git_commit()
    run_key = hashlib.sha256(json.dumps([method, params_text, overrides, data_hash, commit, nodes,
                                         procs_per_node]).encode()).hexdigest()
    phase = time.perf_counter()
    run_dir = train(method, params_file, overrides + [f"train.shards={data_root}/train"], run_key, nodes,
                    procs_per_node, threads)
    train_seconds, phase = time.perf_counter() - phase, time.perf_counter()
    # Results in a folder of this flow run's own: its retries continue there, while another flow run of the
    # same cached training (perhaps on another data root) evaluates afresh in its own.
    out_dir = str(Path(run_dir) / "eval" / str(flow_run.get_id() or "local"))
    # failing after its retries fails the flow
    metrics = evaluate(run_dir, benchmarks, data_root, threads, out_dir)
    eval_seconds = time.perf_counter() - phase
    pngs = attention_pngs(run_dir, data_root)
    preset = read_run_config(run_dir).train.model  # as resolved
    tags = {"run_key": run_key, "git_commit": commit, "data_hash": data_hash,
            "data_level": tracking.data_level(REPO / data_root), "method": method, "preset": preset}
    run_id, version = log_and_register(run_dir, method, metrics, tags, experiment, pngs, out_dir)
    primary = primary_metric or promotion_metric(get_method(method).primary_mode)
    decision = promote(method, version, run_id, primary, regression_tolerance)
    logger.info("%s v%s → %s: %s", tracking.registered_name(method), version, decision["alias"],
                decision["reason"])
    rows = "\n".join(f"| {k} | {format_cell(v, *noise_of(metrics, k))} |"
                     for k, v in sorted(headline(metrics).items()))
    link = (f"{os.environ.get('MLFLOW_TRACKING_URI', '')}/#/experiments/"
            f"{tracking.experiment_id(experiment)}/runs/{run_id}")
    create_markdown_artifact(
        key=f"pretrain-eval-{method}",
        markdown=(f"## {method}: version {version} → **{decision['alias']}**\n\n{decision['reason']}\n\n"
                  f"MLflow run: {link}\n\n| metric | value [95 % interval] (chance) |\n|---|---|\n{rows}\n"),
        description=f"pretrain-eval of {method}",
    )
    total = time.perf_counter() - started
    timing = {"flow_seconds": total, "train_seconds": train_seconds, "eval_seconds": eval_seconds,
              "overhead_seconds": total - train_seconds - eval_seconds}
    logger.info("timing: %s", {k: round(v, 1) for k, v in timing.items()})
    return {"method": method, "run_dir": run_dir, "run_id": run_id, "version": version, **decision,
            "metrics": headline(metrics), **timing}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="serve the deployment pretrain-eval/<name> (blocks)")
    serve.add_argument("--name", default="cpu")
    once = sub.add_parser("run", help="run the flow once in this process")
    once.add_argument("--method", default="flair")
    once.add_argument("--params-file", default="params/cpu.yaml")
    once.add_argument("--set", action="append", default=[], dest="overrides")
    args = parser.parse_args()
    if args.command == "serve":
        pretrain_eval.serve(name=args.name)
    else:
        print(json.dumps(pretrain_eval(method=args.method, params_file=args.params_file,
                                       overrides=args.overrides),
                         indent=1))


if __name__ == "__main__":
    main()
