"""Comparing runs: flat metric dicts per run -> one table (Markdown, CSV, JSON). Drawing is the platform's.

The input is what `flair evaluate` writes and MLflow logs: `<family>/<benchmark>/<mode>/<metric>` -> value,
one dict per run (`load_evals` merges `eval/<run>/<benchmark>.json` files into that). Two ways to choose a
run's scoring mode per benchmark, both giving a `Table`:

* `build_table` (`flair compare`): every benchmark present, the methods' runs first in the registry's order;
  retrieval in the own mode of a method that is not a baseline (FLAIR: `flair`) wherever the run has it,
  else the mode with the highest mean of t2i and i2t R@1 (e.g. FILIP: `filip` or `global`); segmentation
  and classification in the mode with the highest mIoU / top-1. The choice is made on the evaluated split
  itself, so for baselines with several modes it is optimistic.
* `main_table` (the main job's closing table, the dashboard's Compare page): `headline.MAIN_TABLE`'s
  columns, each run in the scoring mode it is given (its method's own mode).

A cell shows its 95 % bootstrap interval and chance level where recorded (`40.00 [36.10, 43.90] (chance
1.56)`); the CSV and JSON carry them as `<key>_ci_low`, `_ci_high`, `_chance`. Imports no torch, no
orchestrator and no chart library: `dvc.yaml`'s `plots:` draw the CSVs, the dashboard its own charts.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from flair_core.evaluation import UNCERTAINTY, headline
from flair_core.evaluation.headline import FAMILY_METRICS, MAIN_TABLE, metric_key

if TYPE_CHECKING:  # the caller passes the registry's entries: importing it here would import torch
    from flair_core.methods import Method

BENCHMARK_ORDER = ("builtin_fine_grained", "builtin_long", "builtin_standard")
NOTE = ("Percent; best per column in **bold**; where recorded, [95 % bootstrap interval over clusters of "
        "queries (a built-in twin pair) or images] and reference levels: (chance: a random ranking's or "
        "random class's expected value; majority: always the most frequent class).")

Noise = tuple[float | None, float | None, float | None, float | None]  # interval low, high, chance, majority


class CompareError(ValueError):
    """Bad input: a missing eval folder, no eval files, an unreadable file. One line, naming the file."""


def noise_of(metrics: Mapping[str, float], key: str) -> Noise:
    """(interval low, interval high, chance level, majority-class level) of a flat metric, None where not
    recorded (old runs, or no such level)."""
    return tuple(metrics.get(key + suffix) for suffix in UNCERTAINTY)


def format_noise(low: float | None = None, high: float | None = None, chance: float | None = None,
                 majority: float | None = None) -> str:
    """`[5.90, 7.50] (chance 0.40)` or `… (chance 16.67, majority 20.00)`: what is recorded of a value's 95 %
    interval and reference levels, else ''."""
    parts = [f"[{low:.2f}, {high:.2f}]"] if low is not None and high is not None else []
    levels = [f"{name} {v:.2f}" for name, v in (("chance", chance), ("majority", majority)) if v is not None]
    return " ".join(parts + ([f"({', '.join(levels)})"] if levels else []))


def format_cell(value: float | None, low: float | None = None, high: float | None = None,
                chance: float | None = None, majority: float | None = None, bold: bool = False) -> str:
    """`6.70 [5.90, 7.50] (chance 0.40)`: a value with its 95 % interval and reference levels where
    recorded."""
    if value is None:
        return "—"
    text = f"**{value:.2f}**" if bold else f"{value:.2f}"
    noise = format_noise(low, high, chance, majority)
    return f"{text} {noise}" if noise else text


@dataclass(frozen=True)
class Column:
    key: str        # "builtin_fine_grained/t2i_r1": the CSV header and the JSON key
    family: str     # retrieval, segmentation, classification
    benchmark: str
    metric: str
    label: str      # "fine-grained t2i R@1"


@dataclass(frozen=True)
class Table:
    runs: tuple[str, ...]
    columns: tuple[Column, ...]
    values: dict[tuple[str, str], float]   # (run, column key or key + "_ci_low" etc.) -> value in percent
    modes: dict[tuple[str, str], str]      # (run, benchmark) -> the scoring mode shown

    def value(self, run: str, key: str) -> float | None:
        return self.values.get((run, key))

    def noise(self, run: str, key: str) -> Noise:
        """(interval low, interval high, chance level, majority level) of a cell, None where not recorded."""
        return tuple(self.values.get((run, key + suffix)) for suffix in UNCERTAINTY)

    def source(self, run: str, column: Column) -> str | None:
        """The full metric key behind a cell (`<family>/<benchmark>/<mode>/<metric>`), None if it is empty."""
        mode = self.modes.get((run, column.benchmark))
        return None if mode is None else f"{column.family}/{column.benchmark}/{mode}/{column.metric}"

    def cell(self, run: str, key: str, bold: bool = False) -> str:
        return format_cell(self.value(run, key), *self.noise(run, key), bold=bold)


def _copy(values: dict, run: str, column_key: str, metrics: Mapping[str, float], metric_key: str) -> None:
    """A cell's value and, where recorded, its interval and chance level."""
    for suffix in ("", *UNCERTAINTY):
        if metric_key + suffix in metrics:
            values[(run, column_key + suffix)] = metrics[metric_key + suffix]


def _base_metric(metric: str) -> str:
    """`t2i_r1_ci_low` -> `t2i_r1`: the metric an interval or chance level belongs to."""
    for suffix in UNCERTAINTY:
        if metric.endswith(suffix):
            return metric.removesuffix(suffix)
    return metric


def load_evals(eval_dir: str | Path) -> dict[str, dict[str, float]]:
    """Run name (the sub-folder) -> its metric files merged. Raises CompareError naming the bad file."""
    eval_dir = Path(eval_dir)
    if not eval_dir.is_dir():
        raise CompareError(f"eval folder {eval_dir} does not exist")
    files = sorted(eval_dir.glob("*/*.json"))
    if not files:
        raise CompareError(f"no eval files ({eval_dir}/<run>/<benchmark>.json) found")
    runs: dict[str, dict[str, float]] = {}
    for path in files:
        try:
            data = json.loads(path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
            raise CompareError(f"{path}: unreadable eval file ({str(err).splitlines()[0]})") from None
        if not isinstance(data, dict):
            raise CompareError(f"{path}: expected a JSON object of metrics")
        runs.setdefault(path.parent.name, {}).update(
            {k: float(v) for k, v in data.items() if isinstance(v, int | float) and not isinstance(v, bool)})
    return runs


def _by_mode(metrics: Mapping[str, float]) -> dict[tuple[str, str], dict[str, dict[str, float]]]:
    """(family, benchmark) -> mode -> metric -> value, for the metrics the table uses."""
    out: dict[tuple[str, str], dict[str, dict[str, float]]] = {}
    for key, value in metrics.items():
        parts = key.split("/")
        if len(parts) != 4 or parts[0] not in FAMILY_METRICS:
            continue  # per-class IoUs, counts, timings
        family, benchmark, mode, metric = parts
        if _base_metric(metric) in dict(FAMILY_METRICS[family]):
            out.setdefault((family, benchmark), {}).setdefault(mode, {})[metric] = value
    return out


def pick_mode(family: str, modes: dict[str, dict[str, float]], preferred: Collection[str] = ()) -> str:
    """A `preferred` retrieval mode the run has in full, else the mode with the best mean headline metric."""
    wanted = [m for m, _ in FAMILY_METRICS[family]]
    for mode in preferred if family == "retrieval" else ():
        if mode in modes and all(m in modes[mode] for m in wanted):
            return mode
    complete = [mode for mode, values in sorted(modes.items()) if all(m in values for m in wanted)]
    candidates = complete or sorted(modes)
    return max(candidates, key=lambda mode: sum(modes[mode].get(m, -math.inf) for m in wanted) / len(wanted))


def _order(names, preferred) -> list[str]:
    return [n for n in preferred if n in names] + sorted(set(names) - set(preferred))


def _short(benchmark: str) -> str:
    return benchmark.removeprefix("builtin_").replace("_", "-")


def build_table(evals: Mapping[str, Mapping[str, float]], methods: Iterable[Method] = ()) -> Table:
    """`flair compare`'s table: every benchmark any run reports, one picked mode per (run, benchmark).

    `methods` (the registry's entries, in its order) order the rows and name the modes held to: the own
    retrieval mode of every method that is not a baseline, so the method under study is never shown in a
    mode picked for being best."""
    methods = list(methods)
    preferred = [m.primary_mode for m in methods if not m.baseline]
    values: dict[tuple[str, str], float] = {}
    modes: dict[tuple[str, str], str] = {}
    seen: set[tuple[str, str]] = set()
    for run, metrics in evals.items():
        for (family, benchmark), by_mode in _by_mode(metrics).items():
            mode = pick_mode(family, by_mode, preferred)
            modes[(run, benchmark)] = mode
            seen.add((family, benchmark))
            for metric, _ in FAMILY_METRICS[family]:
                key = metric_key(family, benchmark, mode, metric)
                _copy(values, run, f"{benchmark}/{metric}", metrics, key)
    columns = []
    for family, metrics in FAMILY_METRICS.items():
        for benchmark in _order([b for f, b in seen if f == family], BENCHMARK_ORDER):
            columns += [Column(f"{benchmark}/{metric}", family, benchmark, metric,
                               f"{_short(benchmark)} {label}")
                        for metric, label in metrics]
    if not columns:
        raise CompareError("the eval files hold no retrieval R@1, segmentation mIoU or classification top-1")
    return Table(tuple(_order(evals, [m.name for m in methods])), tuple(columns), values, modes)


def main_table(metrics: Mapping[str, Mapping[str, float]], own_modes: Mapping[str, str],
               specs: tuple[headline.Column, ...] = MAIN_TABLE) -> Table:
    """The main table (`MAIN_TABLE`'s columns, or other `specs`), runs in the given order, each in the mode
    `own_modes[run]` (its method's own retrieval mode; segmentation and classification columns name
    theirs)."""
    columns, values, modes = [], {}, {}
    for spec in specs:
        family, benchmark, _, metric = spec.key.split("/")
        columns.append(Column(f"{benchmark}/{metric}", family, benchmark, metric, spec.label))
    for run, run_metrics in metrics.items():
        for spec, column in zip(specs, columns, strict=True):
            key = spec.for_mode(own_modes[run])
            if key in run_metrics:
                modes[(run, column.benchmark)] = key.split("/")[2]
            _copy(values, run, column.key, run_metrics, key)
    return Table(tuple(metrics), tuple(columns), values, modes)


def to_markdown(table: Table) -> str:
    """One table, best value of each column in bold, then the scoring mode behind every cell."""
    best = {c.key: max((v for r in table.runs if (v := table.value(r, c.key)) is not None), default=None)
            for c in table.columns}
    lines = ["# Method comparison", "",
             NOTE, "",
             "| method | " + " | ".join(c.label for c in table.columns) + " |",
             "|---|" + "---:|" * len(table.columns)]
    for run in table.runs:
        cells = []
        for c in table.columns:
            v = table.value(run, c.key)
            cells.append(table.cell(run, c.key, bold=v is not None and v == best[c.key]))
        lines.append(f"| {run} | " + " | ".join(cells) + " |")
    lines += ["", "Scoring modes (`flair` mode for FLAIR, otherwise each run's best):", ""]
    benchmarks = list(dict.fromkeys(c.benchmark for c in table.columns))
    for run in table.runs:
        used = [f"{_short(b)} `{table.modes[(run, b)]}`" for b in benchmarks if (run, b) in table.modes]
        lines.append(f"* {run}: " + ", ".join(used))
    return "\n".join(lines) + "\n"


def to_rows(table: Table) -> list[dict[str, object]]:
    """CSV rows: the run, every column's value (blank if missing) followed by its interval and reference
    levels (blank where none), then the mode of every benchmark."""
    benchmarks = list(dict.fromkeys(c.benchmark for c in table.columns))
    rows = []
    for run in table.runs:
        row: dict[str, object] = {"method": run}
        for c in table.columns:
            row[c.key] = _round(table.value(run, c.key))
            # always these columns, so that the CSV's header does not depend on the runs
            row.update({c.key + s: _round(v)
                        for s, v in zip(UNCERTAINTY, table.noise(run, c.key), strict=True)})
        row.update({f"{b}/mode": table.modes.get((run, b), "") for b in benchmarks})
        rows.append(row)
    return rows


def to_json(table: Table) -> dict[str, dict[str, float]]:
    """Numbers only (for `dvc metrics show/diff`): run -> column key (and `<key>_ci_low` etc.) -> value."""
    keys = [c.key + s for c in table.columns for s in ("", *UNCERTAINTY)]
    return {run: {k: _round(v) for k in keys if (v := table.value(run, k)) is not None} for run in table.runs}


def _round(value: float | None):
    return "" if value is None else round(value, 4)


def load_loss_curves(runs_dir: str | Path, runs: list[str],
                     key: str = "loss/total") -> dict[str, dict[int, float]]:
    """Run -> step -> `key` from `<runs_dir>/<run>/metrics.jsonl` (a resumed run's later line wins)."""
    curves: dict[str, dict[int, float]] = {}
    for run in runs:
        path = Path(runs_dir) / run / "metrics.jsonl"
        if not path.is_file():
            continue
        curve: dict[int, float] = {}
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                raise CompareError(f"{path}:{number}: not a JSON line") from None
            if isinstance(record, dict) and key in record and "step" in record:
                curve[int(record["step"])] = float(record[key])
        curves[run] = curve
    return curves


def write_reports(table: Table, out: str | Path,
                  curves: dict[str, dict[int, float]] | None = None) -> list[Path]:
    """compare.md/.csv/.json and, with curves, train_loss.csv (step, one column per run): the files
    `dvc.yaml` declares and plots."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    written = [out / "compare.md", out / "compare.csv", out / "compare.json"]
    written[0].write_text(to_markdown(table))
    rows = to_rows(table)
    with written[1].open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    written[2].write_text(json.dumps(to_json(table), indent=1) + "\n")
    if curves is not None:
        steps = sorted({s for curve in curves.values() for s in curve})
        with (out / "train_loss.csv").open("w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["step", *curves])
            writer.writerows([s, *(_round(curve.get(s)) for curve in curves.values())] for s in steps)
        written.append(out / "train_loss.csv")
    return written
