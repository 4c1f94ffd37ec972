"""The services under load: what tests/test_load.py runs (N pretrain-eval flow runs submitted at once to the
served deployment, beside a sweep whose W workers share one Optuna study, against the services on PostgreSQL
in a scratch copy of the repo on the tiny preset), measured.

    .venv/bin/python benchmarks/services_load.py [--flow-runs 8] [--workers 4] [--trials 8]

Prints, as Markdown tables:
- each service's resident memory, summed over its process group: before the load (idle), its peak under the
  load, and after it;
- API latency percentiles, idle and under the load, from one round of probes a second: MLflow log_metric (to a
  probe run) and search_model_versions (the query every registration makes), Prefect /api/health and a
  flow-run read, Optuna ask + tell (a probe study in the same PostgreSQL storage);
- the load's wall time (submitted to every flow run final), and whether anything was lost or duplicated (the
  test's checks).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # the load, the services and the flows: the repo's own modules, not installed

from services.stack import LABEL, OPTUNA_STORAGE_ENV
from services.supervisor import members
from tests.helpers import load

PAGE = os.sysconf("SC_PAGE_SIZE")


def service_rss(pids: dict[str, dict]) -> dict[str, float]:
    """MiB resident per service, summed over the live processes of its group."""
    def rss(pid: int) -> int:
        try:
            return int((Path("/proc") / str(pid) / "statm").read_text().split()[1]) * PAGE
        except (OSError, IndexError):  # exited meanwhile
            return 0
    return {name: sum(map(rss, members(proc))) / 2**20 for name, proc in pids.items()}


class Probes:
    """One timed call of each service's API per round, as the flows and the dashboard make them."""

    def __init__(self, env: dict):
        import optuna
        from mlflow import MlflowClient

        from flair_lab.tracking import registered_name

        self.env, self.mlflow, self.step = env, MlflowClient(), 0
        self.run_id = self.mlflow.create_run(self.mlflow.create_experiment("latency-probe")).info.run_id
        self.study = optuna.create_study(study_name="latency-probe", storage=env[OPTUNA_STORAGE_ENV])
        model = registered_name(load.METHOD)
        self.calls = {
            "MLflow log_metric": lambda: self.mlflow.log_metric(self.run_id, "probe", 1.0, step=self.step),
            "MLflow search_model_versions": lambda: self.mlflow.search_model_versions(f"name = '{model}'"),
            # not retried: a busy server's 503 counts as a failed call
            "Prefect /api/health": lambda: load.prefect_api(env, "/health", retries=0),
            "Prefect flow-run read (10)": lambda: load.prefect_api(env, "/flow_runs/filter", {"limit": 10},
                                                                   retries=0),
            "Optuna ask + tell": lambda: self.study.tell(self.study.ask(), 0.0),
        }

    def round(self, seconds: dict[str, list[float]], errors: dict[str, int]) -> None:
        self.step += 1
        for name, call in self.calls.items():
            began = time.perf_counter()
            try:
                call()
            except Exception:  # noqa: BLE001 - a failed call (timeout, HTTP 5xx) is counted, not timed
                errors[name] = errors.get(name, 0) + 1
                continue
            seconds.setdefault(name, []).append(time.perf_counter() - began)


class Window:
    """Latencies and memory readings of one period (idle, or under the load)."""

    def __init__(self):
        self.seconds: dict[str, list[float]] = {}
        self.errors: dict[str, int] = {}
        self.memory: list[dict[str, float]] = []

    def sample(self, probes: Probes, pids: dict, done) -> None:
        """A memory reading and a round of probes once a second until `done()`."""
        while not done():
            began = time.monotonic()
            self.memory.append(service_rss(pids))
            probes.round(self.seconds, self.errors)
            time.sleep(max(0.0, 1.0 - (time.monotonic() - began)))


def cpu_ticks() -> list[int]:
    """CPU time so far, from /proc/stat: user, nice, system, idle, iowait, irq, softirq, steal."""
    return [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:9]]


def cpu_shares(begin: list[int], end: list[int]) -> str:
    """How the cores spent a period: busy at normal priority (the load, and anything else at nice 0), busy at
    a lowered one (a background job at nice 19 takes only what nobody else wants), idle."""
    user, nice, system, idle, iowait, irq, softirq, steal = (b - a for a, b in zip(begin, end, strict=True))
    total = user + nice + system + idle + iowait + irq + softirq + steal
    return (f"{100 * (user + system + irq + softirq) / total:.0f} % busy, {100 * nice / total:.0f} % niced, "
            f"{100 * (idle + iowait) / total:.0f} % idle")


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[round(q * (len(ordered) - 1))]


def memory_table(before: dict[str, float], loaded: Window, after: dict[str, float]) -> str:
    rows = {LABEL[n]: (before[n], max(m[n] for m in [before, *loaded.memory]), after[n]) for n in before}
    rows["all"] = tuple(sum(column) for column in zip(*rows.values(), strict=True))
    return "\n".join(["| service | RSS before (MiB) | peak under load | after |", "|---|---|---|---|",
                      *(f"| {label} | {b:.0f} | {p:.0f} | {a:.0f} |" for label, (b, p, a) in rows.items())])


def latency_table(idle: Window, loaded: Window) -> str:
    def ms(window: Window, name: str, q: float) -> str:
        values = window.seconds.get(name)
        return f"{1000 * percentile(values, q):.0f}" if values else "—"

    lines = ["| API call | idle p50 (ms) | idle p95 | load p50 | load p95 | load max | calls idle / load "
             + "(failed) |", "|---|---|---|---|---|---|---|"]
    for name in idle.seconds | loaded.seconds:
        counts = f"{len(idle.seconds.get(name, []))} / {len(loaded.seconds.get(name, []))}"
        failed = idle.errors.get(name, 0) + loaded.errors.get(name, 0)
        lines.append(f"| {name} | {ms(idle, name, 0.5)} | {ms(idle, name, 0.95)} | {ms(loaded, name, 0.5)} | "
                     f"{ms(loaded, name, 0.95)} | {ms(loaded, name, 1.0)} | {counts}"
                     f"{f' ({failed})' if failed else ''} |")
    return "\n".join(lines)


def timeline_table(env: dict, ids: list[str]) -> str:
    """Where a flow run's time went, from the Prefect server: the median (and max) seconds of each flow's wait
    from submission to its start, of each of its tasks, and of the whole run."""
    from datetime import datetime

    def seconds(begin: str | None, end: str | None) -> float | None:
        return (datetime.fromisoformat(end) - datetime.fromisoformat(begin)).total_seconds() \
            if begin and end else None

    def cell(values: list[float]) -> str:
        return f"{percentile(values, 0.5):.0f} ({max(values):.0f})" if values else "—"

    runs = load.prefect_api(env, "/flow_runs/filter", {"flow_runs": {"id": {"any_": ids}}})
    tasks = load.prefect_api(env, "/task_runs/filter", {"flow_runs": {"id": {"any_": ids}}, "limit": 200})
    flows = {run["id"]: "pretrain-eval" if "method" in run["parameters"] else "sweep" for run in runs}
    phases: dict[tuple[str, str], list[float]] = {}
    for run in runs:
        phases.setdefault((flows[run["id"]], "waiting to start"), []).append(
            seconds(run["created"], run["start_time"]))
    for task in sorted(tasks, key=lambda t: t["start_time"] or ""):
        name = task["name"].rsplit("-", 1)[0]  # `train-e8b`: the task, then its run's suffix
        phases.setdefault((flows[task["flow_run_id"]], name), []).append(
            seconds(task["start_time"], task["end_time"]))
    for run in runs:
        phases.setdefault((flows[run["id"]], "whole flow run"), []).append(
            seconds(run["start_time"], run["end_time"]))
    lines = ["| flow | phase | median s (max) |", "|---|---|---|"]
    lines += [f"| {flow} | {phase} | {cell([v for v in values if v is not None])} |"
              for (flow, phase), values in sorted(phases.items(), key=lambda item: item[0][0] != "sweep")]
    return "\n".join(lines)


def main() -> None:
    class Help(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
        """The docstring as written, and each option's default."""

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=Help)
    parser.add_argument("--flow-runs", type=int, default=8, help="pretrain-eval flow runs")
    parser.add_argument("--workers", type=int, default=4, help="sweep workers on the one study")
    parser.add_argument("--trials", type=int, default=8, help="trials the study asks for")
    parser.add_argument("--idle-seconds", type=float, default=20, help="idle probing before the load")
    parser.add_argument("--settle-seconds", type=float, default=10,
                        help="wait after the load before the 'after' memory reading")
    parser.add_argument("--timeout", type=float, default=1800, help="seconds the load may take")
    args = parser.parse_args()

    idle, loaded = Window(), Window()
    with tempfile.TemporaryDirectory(prefix="flair-load-") as folder, \
            load.load_platform(Path(folder), args.flow_runs, args.workers, args.trials) as (repo, env):
        pids = json.loads((repo / ".services" / "state.json").read_text())["pids"]
        probes = Probes(env)
        until = time.monotonic() + args.idle_seconds
        idle.sample(probes, pids, lambda: time.monotonic() > until)
        before = service_rss(pids)
        started, ticks = time.monotonic(), cpu_ticks()
        states: dict[str, str] = {}

        def finished() -> bool:
            states.update(load.flow_run_states(env, ids))
            return not set(states.values()) - load.FINAL or time.monotonic() - started > args.timeout

        try:
            ids = load.start_load(env, args.flow_runs)
            loaded.sample(probes, pids, finished)
        finally:
            load.cancel_unfinished(env)
        wall, cpu = time.monotonic() - started, cpu_shares(ticks, cpu_ticks())
        time.sleep(args.settle_seconds)
        after = service_rss(pids)
        problems = load.lost_or_duplicated(repo, env, ids, args.flow_runs, args.workers, args.trials)
        timeline = timeline_table(env, ids)

    counts = {state: list(states.values()).count(state) for state in sorted(set(states.values()))}
    print(f"\n{args.flow_runs} pretrain-eval flow runs and a sweep of {args.workers} workers × {args.trials} "
          f"trials on PostgreSQL, {os.cpu_count()} cores: {wall:.0f} s from submission to every flow run "
          f"final; flow runs {counts}; the cores meanwhile: {cpu}")
    print("lost or duplicated: " + ("nothing" if not problems else "\n  " + "\n  ".join(problems)))
    print("\n" + "\n\n".join([memory_table(before, loaded, after), latency_table(idle, loaded), timeline]))


if __name__ == "__main__":
    main()
