"""Top-k retrieval and bf16 FLAIR scoring against full fp32 FLAIR scoring, on trained models.

    .venv/bin/python benchmarks/topk_bf16.py runs/study/equal-budget/0b59ae71734c \\
        runs/study/equal-budget/3a5ddbed435b

For each trained FLAIR run (its test split, at the data root its training read) and benchmark: R@1 in both
directions with its 95 % bootstrap interval, in full FLAIR mode (fp32, bf16) and top-k for each k, the seconds
each took, and top-k R@1 as a fraction of full FLAIR R@1. Random weights cannot tell these apart; a model that
learned can.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from flair_core.evaluation.runner import EvalOptions, run_benchmark
from flair_core.models import load_trained
from flair_core.run_config import read_run_config


def r1(metrics: dict, benchmark: str, mode: str, direction: str) -> tuple[float, float, float]:
    key = f"retrieval/{benchmark}/{mode}/{direction}_r1"
    return metrics[key], metrics[f"{key}_ci_low"], metrics[f"{key}_ci_high"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", help="trained FLAIR run folders")
    parser.add_argument("--benchmark", action="append", default=[], help="default: fine-grained and long")
    parser.add_argument("--k", type=int, action="append", default=[], help="default: 16 64 128 256")
    args = parser.parse_args()
    benchmarks = args.benchmark or ["builtin_fine_grained", "builtin_long"]
    ks = args.k or [16, 64, 128, 256]
    print(f"threads={torch.get_num_threads()}")
    print("| run | benchmark | scoring | t2i R@1 [95 %] | i2t R@1 [95 %] | t2i of full | seconds |")
    print("|---|---|---|---|---|---|---|")
    for run in map(Path, args.runs):
        root = Path(read_run_config(run).train.shards).parent
        model = load_trained(run)
        for benchmark in benchmarks:
            rows = [("flair fp32", EvalOptions(modes=("flair",)), "flair"),
                    ("flair bf16", EvalOptions(modes=("flair",), dtype=torch.bfloat16), "flair"),
                    *((f"top-{k}", EvalOptions(modes=("topk",), topk=k), "topk") for k in ks)]
            full = None
            for label, options, mode in rows:
                start = time.perf_counter()
                metrics = run_benchmark(model, benchmark, root, "test", options)
                # embedding the test set included, the same for every row
                seconds = time.perf_counter() - start
                t2i, i2t = r1(metrics, benchmark, mode, "t2i"), r1(metrics, benchmark, mode, "i2t")
                full = full or t2i[0]
                print(f"| {run.name} | {benchmark} | {label} | {t2i[0]:.2f} [{t2i[1]:.2f}, {t2i[2]:.2f}] | "
                      f"{i2t[0]:.2f} [{i2t[1]:.2f}, {i2t[2]:.2f}] | {t2i[0] / full:.2f} | {seconds:.1f} |",
                      flush=True)


if __name__ == "__main__":
    main()
