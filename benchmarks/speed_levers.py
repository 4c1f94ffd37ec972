"""Training throughput of the real training loop under CPU speed levers (threads, loader workers, bf16
autocast, torch.compile), as ratios against a baseline measured in the same invocation.

    .venv/bin/python benchmarks/speed_levers.py --params params/cpu.yaml --methods flair clip --steps 30
    .venv/bin/python benchmarks/speed_levers.py --only baseline bf16 compile --out runs/bench-levers
    .venv/bin/python benchmarks/speed_levers.py --methods flair --set train.batch_size=32 --steps 60

Each configuration is a real `flair train` of --steps steps in a child process, OMP_NUM_THREADS set to the
configuration's threads, one checkpoint at the end and no validation (only training is timed).
Samples/s is the median of the per-step rates in its metrics.jsonl after the first 5 steps (loader start,
allocator, compilation); the first step's time is reported apart, since for `compile` it is the
compilation. CPU seconds are user + system of the child and its loader workers over the whole run (start-up
and checkpoint included), per 1000 trained samples. Run it on an idle machine: every configuration shares
the cores with whatever else runs.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from flair_core.methods import METHODS
from flair_core.run_config import read_run_config

WARMUP = 5  # steps left out of the median
# name -> (precision, compile, loader workers, OMP threads). Every run sets all four, so a params file's own
# choice of a lever cannot leak into a row.
CONFIGS = {
    "baseline": ("fp32", False, 1, 2),
    "threads1": ("fp32", False, 1, 1),
    "workers0": ("fp32", False, 0, 2),
    "workers2": ("fp32", False, 2, 2),
    "bf16": ("bf16", False, 1, 2),
    "compile": ("fp32", True, 1, 2),
}


def levers(name: str) -> tuple[list[str], int, str]:
    """The configuration's overrides, its thread count and a short label."""
    precision, compiled, workers, threads = CONFIGS[name]
    overrides = [f"train.precision={precision}", f"train.compile={str(compiled).lower()}",
                 f"loader.workers={workers}"]
    label = f"{precision}{' compiled' if compiled else ''}, {threads} thr, {workers} wkr"
    return overrides, threads, label


def children_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def train(method: str, name: str, args: argparse.Namespace, out: Path) -> dict:
    """One short training run of `method` under configuration `name`: its throughput and cost, or the error
    line of a run that failed (e.g. `compile` without a C++ compiler), so the other rows still get
    measured."""
    overrides, threads, _ = levers(name)
    run = out / f"{method}-{name}"
    shutil.rmtree(run, ignore_errors=True)  # a previous run's metrics.jsonl would be appended to
    # The configuration's levers come last: they win over --set, so a row measures what its name says.
    sets = [f"method.name={method}", *args.set, "train.epochs=1", f"train.steps_per_epoch={args.steps}",
            f"train.checkpoint_every={args.steps}", "train.validate_every=null", *overrides]
    command = [sys.executable, "-m", "flair_cli", "train", "--out", str(run),
               *[x for p in args.params for x in ("--params", p)], *[x for s in sets for x in ("--set", s)]]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    cpu, wall = children_cpu_seconds(), time.perf_counter()
    result = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    cpu, wall = children_cpu_seconds() - cpu, time.perf_counter() - wall
    if result.returncode != 0:
        lines = [line for line in result.stderr.splitlines() if line.strip()]
        return {"error": f"failed (exit {result.returncode}): {lines[-1] if lines else 'no output'}"}
    steps = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    batch = read_run_config(run).train.batch_size
    return {"samples_per_s": statistics.median(s["samples_per_s"] for s in steps[WARMUP:]),
            "first_step_s": batch / steps[0]["samples_per_s"],
            "cpu_s_per_1000": 1000 * cpu / (batch * len(steps)), "wall_s": wall}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--params", action="append", default=None,
                        help="params file(s) (default params/cpu.yaml)")
    parser.add_argument("--methods", nargs="+", default=["flair", "clip"], choices=list(METHODS))
    parser.add_argument("--steps", type=int, default=30, help=f"training steps per run (> {WARMUP}: warm-up)")
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help="override for every run, e.g. train.batch_size=32 (the levers themselves win)")
    parser.add_argument("--only", nargs="+", default=list(CONFIGS), choices=list(CONFIGS), metavar="CONFIG",
                        help=f"configurations to run (default all: {' '.join(CONFIGS)})")
    parser.add_argument("--out", help="folder of the runs, kept (default: a temporary folder, removed)")
    args = parser.parse_args()
    args.params = args.params or ["params/cpu.yaml"]
    if args.steps <= WARMUP:
        parser.error(f"--steps must exceed the {WARMUP} warm-up steps")
    names = [n for n in CONFIGS if n in args.only]
    print(f"params {' '.join(args.params)} {' '.join(args.set)}; {args.steps} steps per run, median "
          f"samples/s of steps {WARMUP + 1}-{args.steps}; ratio against baseline ({levers('baseline')[2]})")
    print(f"{'method':9s} {'config':9s} {'levers':24s} {'samples/s':>9s} {'ratio':>6s} {'CPU-s/1k':>8s} "
          f"{'wall s':>7s} {'1st step s':>10s}")
    with tempfile.TemporaryDirectory(prefix="speed-levers-") as scratch:
        out = Path(args.out or scratch)
        for method in args.methods:
            base = None
            for name in names:
                r = train(method, name, args, out)
                if "error" in r:
                    print(f"{method:9s} {name:9s} {levers(name)[2]:24s} {r['error']}", flush=True)
                    continue
                base = r["samples_per_s"] if name == "baseline" else base
                ratio = f"{r['samples_per_s'] / base:6.2f}" if base else f"{'-':>6s}"
                print(f"{method:9s} {name:9s} {levers(name)[2]:24s} {r['samples_per_s']:9.1f} {ratio} "
                      f"{r['cpu_s_per_1000']:8.1f} {r['wall_s']:7.1f} {r['first_step_s']:10.2f}", flush=True)


if __name__ == "__main__":
    main()
