"""Comparing methods: `eval/<run>/<benchmark>.json` files -> one table (Markdown, CSV, JSON) and bar charts.

Pure reporting: reads the flat metric files `flair evaluate` writes (`<family>/<benchmark>/<mode>/<metric>`)
and, optionally, each run's `metrics.jsonl`; imports no torch and no orchestrator.

One cell per (run, benchmark metric). A run may report a benchmark in several scoring modes; the table shows
one mode per (run, benchmark), named in the notes:
* retrieval: FLAIR's own `flair` mode wherever the run has it (only FLAIR does), else the mode with the
  highest mean of t2i and i2t R@1 (e.g. FILIP: `filip` or `global`);
* segmentation and classification: the mode with the highest mIoU / top-1.
The choice is made on the evaluated split itself, so for baselines with several modes it is optimistic.
Where the eval files record them, a retrieval cell also shows its 95 % bootstrap interval and chance level
(`40.00 [36.10, 43.90] (chance 1.56)`); the CSV and JSON carry them as `<key>_ci_low`, `_ci_high`, `_chance`.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from flair_core.evaluation import UNCERTAINTY

# The metric each family contributes, its label, and how a mode is picked (mean of these metrics).
FAMILY_METRICS = {
    "retrieval": (("t2i_r1", "t2i R@1"), ("i2t_r1", "i2t R@1")),
    "segmentation": (("miou", "mIoU"),),
    "classification": (("top1", "top-1"),),
}
PREFERRED_MODE = {"retrieval": "flair"}  # FLAIR is reported in its own scoring mode
METHOD_ORDER = ("flair", "clip", "filip", "dreamlip")
BENCHMARK_ORDER = ("builtin_fine_grained", "builtin_long", "builtin_standard")
NOTE = ("Percent; best per column in **bold**; where recorded, [95 % bootstrap interval over queries] and "
        "(chance level: a random ranking's expected value).")


class CompareError(ValueError):
    """Bad input: a missing eval folder, no eval files, an unreadable file. One line, naming the file."""


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

    def noise(self, run: str, key: str) -> tuple[float | None, float | None, float | None]:
        """(interval low, interval high, chance level) of a cell, None where not recorded."""
        return tuple(self.values.get((run, key + suffix)) for suffix in UNCERTAINTY)


def noise_of(metrics: Mapping[str, float], key: str) -> tuple[float | None, float | None, float | None]:
    """(interval low, interval high, chance level) of a flat metric, None where not recorded (old runs)."""
    return tuple(metrics.get(key + suffix) for suffix in UNCERTAINTY)


def format_cell(value: float | None, low: float | None = None, high: float | None = None,
                chance: float | None = None, bold: bool = False) -> str:
    """`6.70 [5.90, 7.50] (chance 0.40)`: a value with its 95 % interval and chance level where recorded."""
    if value is None:
        return "—"
    text = f"**{value:.2f}**" if bold else f"{value:.2f}"
    if low is not None and high is not None:
        text += f" [{low:.2f}, {high:.2f}]"
    if chance is not None:
        text += f" (chance {chance:.2f})"
    return text


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


def _by_mode(metrics: dict[str, float]) -> dict[tuple[str, str], dict[str, dict[str, float]]]:
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


def pick_mode(family: str, modes: dict[str, dict[str, float]]) -> str:
    wanted = [m for m, _ in FAMILY_METRICS[family]]
    preferred = PREFERRED_MODE.get(family)
    if preferred in modes and all(m in modes[preferred] for m in wanted):
        return preferred
    complete = [mode for mode, values in sorted(modes.items()) if all(m in values for m in wanted)]
    candidates = complete or sorted(modes)
    return max(candidates, key=lambda mode: sum(modes[mode].get(m, -math.inf) for m in wanted) / len(wanted))


def _order(names, preferred) -> list[str]:
    return [n for n in preferred if n in names] + sorted(set(names) - set(preferred))


def _label(benchmark: str, metric_label: str) -> str:
    return f"{benchmark.removeprefix('builtin_').replace('_', '-')} {metric_label}"


def build_table(evals: dict[str, dict[str, float]]) -> Table:
    values: dict[tuple[str, str], float] = {}
    modes: dict[tuple[str, str], str] = {}
    seen: set[tuple[str, str]] = set()
    for run, metrics in evals.items():
        for (family, benchmark), by_mode in _by_mode(metrics).items():
            mode = pick_mode(family, by_mode)
            modes[(run, benchmark)] = mode
            seen.add((family, benchmark))
            for metric, _ in FAMILY_METRICS[family]:
                for name in (metric, *(metric + suffix for suffix in UNCERTAINTY)):
                    if name in by_mode[mode]:
                        values[(run, f"{benchmark}/{name}")] = by_mode[mode][name]
    columns = []
    for family, metrics in FAMILY_METRICS.items():
        for benchmark in _order([b for f, b in seen if f == family], BENCHMARK_ORDER):
            columns += [Column(f"{benchmark}/{metric}", family, benchmark, metric, _label(benchmark, label))
                        for metric, label in metrics]
    if not columns:
        raise CompareError("the eval files hold no retrieval R@1, segmentation mIoU or classification top-1")
    return Table(tuple(_order(evals, METHOD_ORDER)), tuple(columns), values, modes)


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
            cells.append(format_cell(v, *table.noise(run, c.key), bold=v is not None and v == best[c.key]))
        lines.append(f"| {run} | " + " | ".join(cells) + " |")
    lines += ["", "Scoring modes (`flair` mode for FLAIR, otherwise each run's best):", ""]
    benchmarks = list(dict.fromkeys(c.benchmark for c in table.columns))
    for run in table.runs:
        used = [f"{b.removeprefix('builtin_').replace('_', '-')} `{table.modes[(run, b)]}`" for b in benchmarks
                if (run, b) in table.modes]
        lines.append(f"* {run}: " + ", ".join(used))
    return "\n".join(lines) + "\n"


def to_rows(table: Table) -> list[dict[str, object]]:
    """CSV rows: the run, every column's value (blank if missing) followed, for retrieval, by its interval and
    chance level, then the mode of every benchmark."""
    benchmarks = list(dict.fromkeys(c.benchmark for c in table.columns))
    rows = []
    for run in table.runs:
        row: dict[str, object] = {"method": run}
        for c in table.columns:
            row[c.key] = _round(table.value(run, c.key))
            if c.family == "retrieval":  # always these columns, so the CSV's header does not depend on the runs
                row.update({c.key + s: _round(v) for s, v in zip(UNCERTAINTY, table.noise(run, c.key), strict=True)})
        row.update({f"{b}/mode": table.modes.get((run, b), "") for b in benchmarks})
        rows.append(row)
    return rows


def to_json(table: Table) -> dict[str, dict[str, float]]:
    """Numbers only (for `dvc metrics show/diff`): run -> column key (and `<key>_ci_low` etc.) -> value."""
    keys = [c.key + s for c in table.columns for s in ("", *UNCERTAINTY)]
    return {run: {k: _round(v) for k in keys if (v := table.value(run, k)) is not None} for run in table.runs}


def _round(value: float | None):
    return "" if value is None else round(value, 4)


def load_loss_curves(runs_dir: str | Path, runs: list[str], key: str = "loss/total") -> dict[str, dict[int, float]]:
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


def write_reports(table: Table, out: str | Path, curves: dict[str, dict[int, float]] | None = None) -> list[Path]:
    """compare.md/.csv/.json, compare_retrieval.png, compare_dense.png; with curves also train_loss.csv and
    compare_loss.png. Every file is written even when a family is absent, so pipelines can declare them."""
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
    for name, families, title in (("compare_retrieval.png", ("retrieval",),
                                   "Retrieval R@1 (%; black lines: 95 % intervals where recorded)"),
                                  ("compare_dense.png", ("segmentation", "classification"),
                                   "Zero-shot segmentation mIoU and classification top-1 (%)")):
        columns = [c for c in table.columns if c.family in families]
        series = {run: [table.value(run, c.key) for c in columns] for run in table.runs}
        intervals = {run: [table.noise(run, c.key)[:2] for c in columns] for run in table.runs}
        bar_chart(out / name, title, [c.label for c in columns], series, intervals)
        written.append(out / name)
    if curves is not None:
        steps = sorted({s for curve in curves.values() for s in curve})
        with (out / "train_loss.csv").open("w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["step", *curves])
            writer.writerows([s, *(_round(curve.get(s)) for curve in curves.values())] for s in steps)
        line_chart(out / "compare_loss.png", "Training loss (loss/total)", curves)
        written += [out / "train_loss.csv", out / "compare_loss.png"]
    return written


# Charts: matplotlib when it is installed (it comes with the platform extra), else plain PIL (a library
# dependency), so `flair compare` works in a library-only install too. Missing values are left out.
COLOURS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f")


def _matplotlib():
    try:
        from matplotlib.figure import Figure  # the object API: no pyplot state, no display backend
    except ImportError:
        return None
    return Figure


Interval = tuple[float | None, float | None]


def _error_bars(values: list[float | None], intervals: list[Interval] | None) -> list[tuple[int, float, float]]:
    """(group, low, high) of every bar with a recorded interval."""
    return [(g, low, high) for g, (v, (low, high)) in enumerate(zip(values, intervals or [], strict=False))
            if v is not None and low is not None and high is not None]


def bar_chart(path: Path, title: str, groups: list[str], series: dict[str, list[float | None]],
              intervals: dict[str, list[Interval]] | None = None) -> None:
    """Grouped bars: one group per column, one bar per run; a 95 % interval as an error bar where recorded."""
    intervals = intervals or {}
    Figure = _matplotlib()
    if Figure is None:
        return _pil_bars(path, title, groups, series, intervals)
    fig = Figure(figsize=(max(6.0, 1.3 * len(groups) + 2), 4.0), dpi=100)
    ax = fig.add_subplot()
    width = 0.8 / max(len(series), 1)
    for i, (run, values) in enumerate(series.items()):
        offset = (i - (len(series) - 1) / 2) * width
        xs = [g + offset for g, v in enumerate(values) if v is not None]
        ax.bar(xs, [v for v in values if v is not None], width, label=run, color=COLOURS[i % len(COLOURS)])
        for g, low, high in _error_bars(values, intervals.get(run)):
            ax.plot([g + offset] * 2, [low, high], color="black", linewidth=1)
    ax.set_xticks(range(len(groups)), groups, rotation=20, ha="right")
    ax.set_title(title)
    if groups:
        ax.legend(fontsize="small")
    else:
        ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes)
    fig.tight_layout()
    fig.savefig(path, metadata={"Software": None})


def line_chart(path: Path, title: str, curves: dict[str, dict[int, float]]) -> None:
    """One line per run: value by step."""
    Figure = _matplotlib()
    if Figure is None:
        return _pil_lines(path, title, curves)
    fig = Figure(figsize=(6.0, 4.0), dpi=100)
    ax = fig.add_subplot()
    for i, (run, curve) in enumerate(curves.items()):
        steps = sorted(curve)
        ax.plot(steps, [curve[s] for s in steps], label=run, color=COLOURS[i % len(COLOURS)])
    ax.set_xlabel("step")
    ax.set_title(title)
    if any(curves.values()):
        ax.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(path, metadata={"Software": None})


def _pil_canvas(title: str, size=(720, 400)):
    from PIL import Image, ImageDraw

    image = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(image)
    draw.text((size[0] // 2, 12), title, fill="black", anchor="mt")
    return image, draw


def _pil_legend(draw, names, x: int, y: int = 36) -> None:
    for i, name in enumerate(names):
        draw.rectangle((x, y + 14 * i, x + 10, y + 14 * i + 10), fill=COLOURS[i % len(COLOURS)])
        draw.text((x + 14, y + 14 * i), name, fill="black")


def _pil_bars(path: Path, title: str, groups: list[str], series: dict[str, list[float | None]],
              intervals: dict[str, list[Interval]]) -> None:
    image, draw = _pil_canvas(title)
    left, top, right, bottom = 50, 40, 600, 340  # plot area
    bars = {run: _error_bars(values, intervals.get(run)) for run, values in series.items()}
    top_value = max([v for vs in series.values() for v in vs if v is not None]
                    + [high for b in bars.values() for _, _, high in b] + [1e-9])
    draw.line((left, bottom, right, bottom), fill="black")
    group_w = (right - left) / max(len(groups), 1)
    bar_w = 0.8 * group_w / max(len(series), 1)
    for g, label in enumerate(groups):
        x0 = left + g * group_w + 0.1 * group_w
        for i, values in enumerate(series.values()):
            if values[g] is not None:
                h = (bottom - top) * values[g] / top_value
                draw.rectangle((x0 + i * bar_w, bottom - h, x0 + (i + 1) * bar_w - 1, bottom),
                               fill=COLOURS[i % len(COLOURS)])
        draw.text((left + (g + 0.5) * group_w, bottom + 6), label, fill="black", anchor="mt")
    for i, run in enumerate(series):
        for g, low, high in bars[run]:
            x = left + g * group_w + 0.1 * group_w + (i + 0.5) * bar_w
            y0, y1 = (bottom - (bottom - top) * v / top_value for v in (low, high))
            draw.line((x, y0, x, y1), fill="black")
    draw.text((left - 6, top), f"{top_value:.1f}", fill="black", anchor="rm")
    draw.text((left - 6, bottom), "0", fill="black", anchor="rm")
    if not groups:
        draw.text(((left + right) // 2, (top + bottom) // 2), "no data", fill="black", anchor="mm")
    _pil_legend(draw, list(series), right + 10)
    image.save(path)


def _pil_lines(path: Path, title: str, curves: dict[str, dict[int, float]]) -> None:
    image, draw = _pil_canvas(title)
    left, top, right, bottom = 50, 40, 600, 340
    points = [(s, v) for curve in curves.values() for s, v in curve.items()]
    if points:
        (s0, s1), (v0, v1) = [(min(a), max(a)) for a in zip(*points)]
        sx, sy = (right - left) / max(s1 - s0, 1), (bottom - top) / max(v1 - v0, 1e-9)
        for i, curve in enumerate(curves.values()):
            xy = [(left + (s - s0) * sx, bottom - (curve[s] - v0) * sy) for s in sorted(curve)]
            if len(xy) > 1:
                draw.line(xy, fill=COLOURS[i % len(COLOURS)], width=2)
        draw.text((left - 6, top), f"{v1:.2f}", fill="black", anchor="rm")
        draw.text((left - 6, bottom), f"{v0:.2f}", fill="black", anchor="rm")
    draw.line((left, bottom, right, bottom), fill="black")
    draw.text(((left + right) // 2, bottom + 20), "step", fill="black", anchor="mt")
    _pil_legend(draw, list(curves), right + 10)
    image.save(path)
