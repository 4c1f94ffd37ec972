"""Start-up of the `flair` command, beside an earlier commit's, measured in one run.

    .venv/bin/python benchmarks/startup.py --before 157baa9 [--dvc]

Each figure is the median wall time of --repeat fresh processes: `flair --help`, each verb's `--help` (its
parsing, everything a verb does before its own imports), `import flair_core` and what it spends the time on
(-X importtime). `--before REV` checks REV out into a temporary worktree and times its CLI beside this one.
`--dvc` also times `dvc repro` of the tiny pipeline (params/pipeline.yaml over params/cpu.yaml, every method)
in a scratch git copy of each tree, run one after the other.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
VERBS = ("models", "methods", "benchmarks", "prepare", "train", "evaluate", "attention", "compare",
         "check-weights")
# What a pipeline reads from the repo; dvc.yaml's stages depend on the code folders that exist in the tree.
PIPELINE_FILES = ("params", "dvc.yaml", ".dvc/config", ".dvc/.gitignore", ".dvcignore", ".gitignore",
                  "pyproject.toml")
IMPORT_GROUPS = ("torch", "torchvision", "torch._dynamo", "timm", "open_clip", "flair_core")


class Tree:
    """A checkout and the command that starts its CLI (the CLI moved out of flair_core in issue 16)."""

    def __init__(self, root: Path):
        self.root = root
        self.module = "flair_cli" if (root / "flair_cli").is_dir() else "flair_core.cli"
        self.env = {**os.environ, "PYTHONPATH": str(root)}

    def flair(self, *args: str) -> list[str]:
        return [sys.executable, "-m", self.module, *args]


def median_seconds(command: list[str], env: dict, repeat: int, cwd: Path) -> float | None:
    """None when the command fails (a verb the earlier tree does not have)."""
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        if subprocess.run(command, check=False, env=env, cwd=cwd, capture_output=True).returncode:
            return None
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def row_text(label: str, row: dict[str, float | None]) -> str:
    cells = ["—" if s is None else f"{s:.2f}" for s in row.values()]
    if len(row) == 2:
        before, now = row.values()
        cells.append("—" if None in (before, now) else f"{before / now:.3g}x")
    return f"| {label} | {' | '.join(cells)} |"


def import_breakdown(tree: Tree) -> dict[str, float]:
    """Cumulative seconds of the first import of each group's top module, from -X importtime."""
    result = subprocess.run([sys.executable, "-X", "importtime", "-c", "import flair_core"], env=tree.env,
                            cwd=tree.root, capture_output=True, text=True, check=True)
    cumulative = {}
    for line in result.stderr.splitlines():
        parts = line.split("|")
        if len(parts) == 3 and parts[1].strip().isdigit():
            cumulative.setdefault(parts[2].strip(), int(parts[1]) / 1e6)
    return {name: cumulative.get(name, 0.0) for name in IMPORT_GROUPS}


def dvc_repro_seconds(tree: Tree, scratch: Path) -> float:
    """A committed copy of the tree's pipeline at the tiny preset, then one timed `dvc repro`."""
    copy = scratch / tree.root.name
    for item in (*[p for p in ("flair_core", "flair_cli") if (tree.root / p).is_dir()], *PIPELINE_FILES):
        source, target = tree.root / item, copy / item
        target.parent.mkdir(parents=True, exist_ok=True)
        if source.is_dir():
            shutil.copytree(source, target, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(source, target)
    dvc_yaml = copy / "dvc.yaml"
    dvc_yaml.write_text(dvc_yaml.read_text().replace("override_file: params/cpu.yaml",
                                                     "override_file: params/pipeline.yaml"))
    bin_dir = copy / ".bin"  # the stages call `flair`: this tree's
    bin_dir.mkdir()
    (bin_dir / "flair").write_text(f'#!/bin/sh\nexec {sys.executable} -m {tree.module} "$@"\n')
    (bin_dir / "flair").chmod(0o755)
    env = {**tree.env, "PYTHONPATH": str(copy), "PATH": f"{bin_dir}:{os.environ['PATH']}",
           "DVC_NO_ANALYTICS": "1"}
    for command in (["git", "init", "-q", "-b", "main"], ["git", "add", "-A"],
                    ["git", "-c", "user.name=bench", "-c", "user.email=bench@example.com", "commit", "-q",
                     "-m", "tiny pipeline"]):
        subprocess.run(command, cwd=copy, env=env, check=True, capture_output=True)
    dvc = str(Path(sys.executable).with_name("dvc"))
    start = time.perf_counter()
    result = subprocess.run([dvc, "repro"], check=False, cwd=copy, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if result.returncode:
        raise SystemExit(f"dvc repro in {copy} failed: "
                         f"{(result.stderr or result.stdout).strip().splitlines()[-1]}")
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--before", metavar="REV", help="earlier commit to time beside the working tree")
    parser.add_argument("--repeat", type=int, default=5, help="processes per figure (median)")
    parser.add_argument("--dvc", action="store_true",
                        help="also time `dvc repro` of the tiny pipeline (minutes)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="flair-startup-") as scratch:
        trees = {"now": Tree(REPO)}
        if args.before:
            worktree = Path(scratch) / "before"
            subprocess.run(["git", "worktree", "add", "--detach", "-q", str(worktree), args.before], cwd=REPO,
                           check=True)
            trees = {"before": Tree(worktree), **trees}
        try:
            report(trees, args, Path(scratch))
        finally:
            if args.before:
                subprocess.run(["git", "worktree", "remove", "--force", str(worktree)], cwd=REPO, check=True)


def report(trees: dict[str, Tree], args: argparse.Namespace, scratch: Path) -> None:
    names = list(trees)
    ratio = len(names) == 2
    print(f"median of {args.repeat} processes, seconds; "
          + ", ".join(f"{n}: {t.module}" for n, t in trees.items()))
    print(f"| command | {' | '.join(names)} |{' before/now |' if ratio else ''}")
    print(f"|---|{'---|' * len(names)}{'---|' if ratio else ''}")
    commands = [("flair --help", ("--help",)),
                *((f"flair {verb} --help", (verb, "--help")) for verb in VERBS)]
    for label, argv in commands:
        row = {name: median_seconds(tree.flair(*argv), tree.env, args.repeat, tree.root) for name, tree in
               trees.items()}
        print(row_text(f"`{label}`", row))
    row = {name: median_seconds([sys.executable, "-c", "import flair_core"], tree.env, args.repeat, tree.root)
           for name, tree in trees.items()}
    print(row_text("`import flair_core`", row))
    groups = import_breakdown(trees["now"])
    print("\n`import flair_core`, cumulative seconds of each first import (-X importtime, one process): "
          + ", ".join(f"{name} {seconds:.2f}" for name, seconds in groups.items()))
    if args.dvc:
        row = {name: dvc_repro_seconds(tree, scratch / name) for name, tree in trees.items()}
        print("\n`dvc repro`, tiny pipeline, seconds: " + ", ".join(f"{n} {s:.0f}" for n, s in row.items())
              + (f" (before/now {row['before'] / row['now']:.2f}x)" if ratio else ""))


if __name__ == "__main__":
    main()
