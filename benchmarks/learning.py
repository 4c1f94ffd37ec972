"""Learning per CPU-minute: train each method with its recipe, then print samples/s and the validation
R@1 it reached per CPU-minute, beside the metric's chance level.

    .venv/bin/python benchmarks/learning.py --params params/cpu.yaml --out runs/bench-learning
    .venv/bin/python benchmarks/learning.py --methods flair clip --set train.precision=bf16 --threads 2

Each run is a real `flair train` (validation on, the method's own scoring mode) in a child process, so CPU
time is measured exactly (user + system of the child and its loader workers). Runs are resumed, not
repeated: re-running the command with the same --out prints the table again at no cost.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

from flair_core.evaluation.headline import promotion_metric
from flair_core.methods import METHODS


def children_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def train(method: str, args: argparse.Namespace) -> dict:
    run = Path(args.out) / method
    timing = run / "timing.json"
    if timing.is_file():
        return json.loads(timing.read_text())
    command = [sys.executable, "-m", "flair_cli", "train", "--out", str(run), "--resume", "auto",
               *[x for p in args.params for x in ("--params", p)], "--set", f"method.name={method}",
               "--set", f"train.validate_every={args.validate_every}",
               *[x for s in args.set for x in ("--set", s)]]
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
    cpu, wall = children_cpu_seconds(), time.perf_counter()
    subprocess.run(command, check=True, env=env, stdout=subprocess.DEVNULL)
    result = {"cpu_s": children_cpu_seconds() - cpu, "wall_s": time.perf_counter() - wall}
    timing.write_text(json.dumps(result))
    return result


def summary(method: str, args: argparse.Namespace, timing: dict) -> dict:
    run = Path(args.out) / method
    steps = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    validations = [json.loads(line) for line in (run / "val_metrics.jsonl").read_text().splitlines()]
    key = promotion_metric(METHODS[method].primary_mode, args.benchmark)
    last = validations[-1]
    rates = sorted(s["samples_per_s"] for s in steps)
    cpu_min = timing["cpu_s"] / 60
    return {"method": method, "steps": steps[-1]["step"], "samples_per_s": rates[len(rates) // 2],
            "cpu_min": cpu_min, "wall_min": timing["wall_s"] / 60, "r1": last[key],
            "chance": last.get(f"{key}_chance"), "r1_per_cpu_min": last[key] / cpu_min,
            "curve": [(v["step"], round(v[key], 2)) for v in validations]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--params", action="append", default=None,
                        help="params file(s) (default params/cpu.yaml)")
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help="override for every run, e.g. train.precision=bf16")
    parser.add_argument("--threads", type=int, default=2,
                        help="intra-op threads (OMP_NUM_THREADS) of each run")
    parser.add_argument("--validate-every", type=int, default=50, help="steps between validations")
    parser.add_argument("--benchmark", default="builtin_fine_grained", help="validation benchmark reported")
    parser.add_argument("--out", default="runs/bench-learning",
                        help="folder of the runs (resumed if present)")
    args = parser.parse_args()
    args.params = args.params or ["params/cpu.yaml"]
    print(f"params {' '.join(args.params)} {' '.join(args.set)}; threads {args.threads}; "
          f"validation t2i R@1 on {args.benchmark} (val split), each method in its own scoring mode")
    print(f"{'method':9s} {'steps':>6s} {'samples/s':>9s} {'CPU-min':>8s} {'wall-min':>8s} {'R@1':>6s} "
          f"{'chance':>6s} {'R@1/CPU-min':>11s}  validation curve (step, R@1)")
    for method in args.methods:
        s = summary(method, args, train(method, args))
        chance = f"{s['chance']:6.2f}" if s["chance"] is not None else f"{'-':>6s}"
        print(f"{method:9s} {s['steps']:6d} {s['samples_per_s']:9.1f} {s['cpu_min']:8.2f} "
              f"{s['wall_min']:8.2f} {s['r1']:6.2f} {chance} {s['r1_per_cpu_min']:11.2f}  {s['curve']}")


if __name__ == "__main__":
    main()
