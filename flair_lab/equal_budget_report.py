"""The equal-budget study's report: the main table in the paper's layout, the ablations in the paper's order
with its published numbers beside ours, K and length curves, validation curves, and a verdict per paper claim
computed from the numbers (holds / does not hold / within noise). Markdown + CSV + PNG in one folder.

Everything is computed from the runs' per-query records (`flair_core/evaluation/records.py`) with
`flair_core/evaluation/stats.py`: across seeds a cell is the seeds' mean with a two-level bootstrap interval
(seeds, then clusters of queries or images), and each claim is a paired difference (same seeds, same queries)
judged with Holm's correction over the report's claims. `results.csv` holds every seed's value too.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from statistics import mean

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from flair_core.evaluation import CHANCE, CI_HIGH, CI_LOW, MAJORITY, stats
from flair_core.evaluation.comparison import format_cell, main_table
from flair_core.evaluation.headline import MAIN_TABLE, Column, is_headline, metric_key, own_mode_key
from flair_core.evaluation.records import SUFFIX, load_records, outcomes, records_path
from flair_core.methods import METHODS
from flair_core.run_config import read_run_config
from flair_lab import paper_numbers

PAPER = "../shared/reference/paper_numbers.md"
# Our ablation settings (params/study.yaml) and the paper's row of the same setting in paper_numbers.yaml; the
# paper's labels differ from ours, so the pairing is stated here.
# Our "TCS only" trains K sub-captions with diverse sampling: the paper's "TCS + multi-caption + diverse
# sampling" row, not its one-caption "text-conditioned loss only (TCS)".
PAPER_LOSS_ROWS = {"global sigmoid only": "global sigmoid loss, one caption",
                   "MPS only": "global + multi-caption (MPS, no TCS)",
                   "TCS only": "TCS + multi-caption + diverse sampling",
                   "TCS + MPS, w 0.5": "FLAIR full (TCS + MPS + multi-caption + diverse sampling)"}
PAPER_LOSS_COLUMNS = ("coco_t2i_r1", "voc20_miou", "imagenet_top1")
PAPER_K_ROWS = {"K 2": 2, "K 8": 8}
SEG_MARGIN = 10.0  # mIoU points a segmentation claim needs, beside its paired interval excluding 0
FINE, LONG = own_mode_key("builtin_fine_grained", "t2i_r1"), own_mode_key("builtin_long", "t2i_r1")
SEG = metric_key("segmentation", "builtin_segmentation", "{mode}", "miou")  # every mode the method offers
CLS = metric_key("classification", "builtin_classification", "zeroshot", "top1")


def collect(config, runs_dir: Path) -> dict[tuple[str, str], dict[int, dict]]:
    """(group, label) -> seed -> {"metrics": flat metrics, "method": name, "config": resolved config, "dir":
    run folder} of finished runs."""
    out: dict[tuple[str, str], dict[int, dict]] = {}
    for record in sorted(runs_dir.glob("*/study.json")):
        folder = record.parent
        results = [folder / "eval" / f"{b}.json" for b in config.benchmarks]
        if not all(r.is_file() and records_path(r.parent, b).is_file()
                   for r, b in zip(results, config.benchmarks)):
            continue  # not finished (or evaluated before per-query records were kept): not in the report
        metrics: dict = {}
        for r in results:
            metrics.update(json.loads(r.read_text()))
        resolved = read_run_config(folder)
        for entry in json.loads(record.read_text()):
            if entry["study"] == config.name:
                out.setdefault((entry["group"], entry["label"]), {})[entry["seed"]] = {
                    "metrics": metrics, "method": resolved.method.name,
                    "config": resolved.model_dump(mode="json"), "dir": folder}
    return out


def paper_loss(label: str, column: str) -> float:
    return paper_numbers.value("loss_ablation", column, method=PAPER_LOSS_ROWS[label])


def paper_k(label: str) -> float:
    return paper_numbers.value("num_sub_captions", "coco_t2i_r1", K=PAPER_K_ROWS[label])


def published(group: str, label: str) -> str:
    """The paper's numbers beside one of our ablation rows, "—" where it published none."""
    if group == "loss":
        if label not in PAPER_LOSS_ROWS:
            return "—"
        return " / ".join(str(paper_loss(label, column)) for column in PAPER_LOSS_COLUMNS)
    return f"COCO T2I {paper_k(label)}" if label in PAPER_K_ROWS else "—"


def own(key: str, method: str) -> str:
    return key.format(mode=METHODS[method].primary_mode) if "{mode}" in key else key


@cache
def _records_as_of(path: Path, modified_ns: int) -> dict:
    return load_records(path)


def _records(path: Path) -> dict:
    """A run's records, read once per version of the file (a re-evaluated run is read afresh)."""
    return _records_as_of(path, path.stat().st_mtime_ns if path.is_file() else 0)


@dataclass(frozen=True)
class Cell:
    """One metric of one configuration over its seeds: the seed mean with its two-level interval, the
    reference levels, and each seed's resampling units (for paired comparisons on the same seeds and
    queries)."""

    estimate: stats.Estimate
    chance: float | None
    majority: float | None
    units: dict[int, stats.Outcomes]

    @property
    def value(self) -> float:
        return self.estimate.value

    @property
    def low(self) -> float:
        return self.estimate.low

    @property
    def high(self) -> float:
        return self.estimate.high


def cell(seeds: dict[int, dict], key: str, mode: str | None = None) -> Cell | None:
    """A metric (`{mode}` in the key: each run's own mode, or `mode`) over the seeds, from their per-query
    records; None where a run lacks it."""
    units, chance, majority = {}, [], []
    for seed, entry in sorted(seeds.items()):
        name = key.format(mode=mode) if mode else own(key, entry["method"])
        if name not in entry["metrics"]:
            return None
        _, benchmark, run_mode, metric = name.split("/")
        path = entry["dir"] / "eval" / f"{benchmark}{SUFFIX}"
        units[seed] = outcomes(_records(path), f"{run_mode}/{metric}", str(path))
        chance.append(entry["metrics"].get(name + CHANCE))
        majority.append(entry["metrics"].get(name + MAJORITY))
    if not units:
        return None
    level = {name: mean(v) if None not in v else None
             for name, v in (("chance", chance), ("majority", majority))}
    return Cell(stats.estimate(list(units.values())), level["chance"], level["majority"], units)


def seed_means(seeds: dict[int, dict], specs, mode: str) -> dict[str, float]:
    """A configuration's cells as flat metrics — seed mean, interval, reference levels — named as a run's
    (`{mode}` filled with `mode`), for the library's table builder."""
    out = {}
    for spec in specs:
        if (c := cell(seeds, spec.key)) is None:
            continue
        key = spec.for_mode(mode)
        out |= {key: c.value, key + CI_LOW: c.low, key + CI_HIGH: c.high}
        out |= {key + suffix: level for suffix, level in ((CHANCE, c.chance), (MAJORITY, c.majority))
                if level is not None}
    return out


def best_mode_cell(seeds: dict[int, dict], key: str) -> tuple[str, Cell] | None:
    """Segmentation in every mode the run's method offers; the mode with the highest mean (chosen on the test
    split for every method alike)."""
    method = next(iter(seeds.values()))["method"]
    found = {m: c for m in METHODS[method].segmentation_modes if (c := cell(seeds, key, m)) is not None}
    return max(found.items(), key=lambda item: item[1].value) if found else None


def text(c: Cell | None) -> str:
    """`5.16 [4.37, 5.91] (chance 0.37) n=3`: the seed mean, its interval, reference levels, seeds."""
    if c is None:
        return "—"
    return f"{format_cell(c.value, c.low, c.high, c.chance, c.majority)} n={c.estimate.seeds}"


def beyond_reference(c: Cell) -> bool:
    """The interval clears chance and the majority-class level: anything at them has learned nothing."""
    return all(level is None or c.low > level for level in (c.chance, c.majority))


def paired_difference(a: Cell, b: Cell) -> stats.Difference | None:
    """A − B on the seeds both have, paired by seed and query."""
    seeds = sorted(set(a.units) & set(b.units))
    if not seeds:
        return None
    return stats.paired([a.units[s] for s in seeds], [b.units[s] for s in seeds])


def difference_text(d: stats.Difference) -> str:
    return (f"{d.value:+.2f} [{d.low:+.2f}, {d.high:+.2f}], ratio {d.ratio:.2f} [{d.ratio_low:.2f}, "
            f"{d.ratio_high:.2f}], p {d.p:.3f}, {d.seeds} seed{'s' if d.seeds > 1 else ''}")


@dataclass(frozen=True)
class Row:
    """One claim's line in the report: judged (Holm over the report's claims) or set aside, with the
    numbers."""

    claim: str
    numbers: str
    judged: stats.Claim | None = None
    set_aside: str = ""  # "not measured", "not beyond chance"


def claim_row(name: str, a: Cell | None, b: Cell | None, numbers: str, **target) -> Row:
    if a is None or b is None:
        return Row(name, numbers, set_aside="not measured")
    if not (beyond_reference(a) and beyond_reference(b)):
        return Row(name, numbers, set_aside="not beyond chance")
    difference = paired_difference(a, b)
    if difference is None:
        return Row(name, numbers, set_aside="no common seeds")
    return Row(name, numbers, stats.Claim(name, difference, **target))


def claims(runs: dict) -> list[Row]:
    """The paper's claims and the study's targets, each as a paired difference."""
    method = {m: runs.get(("methods", m)) for m in METHODS}
    rows = []
    flair_fine = cell(method["flair"], FINE) if method["flair"] else None
    rivals = {m: c for m in METHODS if METHODS[m].baseline and method.get(m) and (c := cell(method[m], FINE))}
    if flair_fine and rivals:
        # chosen on the test split: the baselines' best case
        best = max(rivals, key=lambda m: rivals[m].value)
        paper_flair, paper_dreamlip = (paper_numbers.value("main_comparison", "docci_fg_t2i_r1", method=m)
                                       for m in ("FLAIR", "DreamLIP"))
        numbers = f"FLAIR {text(flair_fine)} vs best baseline {best} {text(rivals[best])}"
        rows.append(claim_row("FLAIR beats CLIP, FILIP and DreamLIP on fine-grained t2i R@1 (paper [S]: "
                              f"DOCCI-FG {paper_flair} vs DreamLIP {paper_dreamlip})", flair_fine,
                              rivals[best], numbers))
        rows.append(claim_row("target: FLAIR fine-grained ≥ 2× the best baseline, the ratio's interval above "
                              "1.5×", flair_fine, rivals[best], numbers, min_ratio=2.0, ratio_floor=1.5))
    tcs, glob = runs.get(("loss", "TCS only")), runs.get(("loss", "global sigmoid only"))
    found = (best_mode_cell(tcs, SEG), best_mode_cell(glob, SEG)) if tcs and glob else (None, None)
    if all(found):  # both ran, and the study evaluated segmentation
        (tcs_mode, a), (glob_mode, b) = found
        voc20 = [paper_loss(label, "voc20_miou") for label in ("TCS only", "global sigmoid only")]
        rows.append(claim_row("TCS creates spatial grounding: TCS-only segmentation ≫ global-only (≥ "
                              f"{SEG_MARGIN:.0f} mIoU; paper [S] {voc20[0]} vs {voc20[1]})", a, b,
                              f"TCS only ({tcs_mode}) {text(a)} vs global only ({glob_mode}) {text(b)}",
                              min_value=SEG_MARGIN))
    seg_rivals = {m: found for m in METHODS if METHODS[m].baseline and method.get(m)
                  and (found := best_mode_cell(method[m], SEG))}
    flair_seg = best_mode_cell(method["flair"], SEG) if method["flair"] else None
    if flair_seg and seg_rivals:
        flair_mode, a = flair_seg
        best = max(seg_rivals, key=lambda m: seg_rivals[m][1].value)
        rival_mode, b = seg_rivals[best]
        rows.append(claim_row(f"target: FLAIR segmentation (best mode) ≥ the best baseline's best mode + "
                              f"{SEG_MARGIN:.0f} mIoU", a, b,
                              f"FLAIR ({flair_mode}) {text(a)} vs {best} ({rival_mode}) {text(b)}",
                              min_value=SEG_MARGIN))
    long_rivals = {m: c for m in METHODS if METHODS[m].baseline and method.get(m)
                   and (c := cell(method[m], LONG))}
    if method["flair"] and long_rivals:
        a = cell(method["flair"], LONG)
        best = max(long_rivals, key=lambda m: long_rivals[m].value)
        rows.append(claim_row("target: FLAIR long-caption t2i R@1 within 5 points of the best baseline", a,
                              long_rivals[best], f"FLAIR {text(a)} vs {best} {text(long_rivals[best])}",
                              threshold=-5.0))
    k2, k8 = runs.get(("k", "K 2")), runs.get(("k", "K 8"))
    if k2 and k8:
        a, b = cell(k8, FINE), cell(k2, FINE)
        rows.append(claim_row(f"more sub-captions help: K 8 > K 2 (paper [S]: COCO T2I {paper_k('K 8')} vs "
                              f"{paper_k('K 2')})", a, b,
                              f"K 8 {text(a)} vs K 2 {text(b)} (fine-grained t2i R@1)"))
    mixed = runs.get(("length", "mixed 1–3"))
    fixed = {label: seeds for label in ("fixed 1", "fixed 2", "fixed 3")
             if (seeds := runs.get(("length", label)))}
    if mixed and fixed:
        for key, name in ((FINE, "fine-grained"), (LONG, "long-caption")):
            cells = {label: cell(seeds, key) for label, seeds in fixed.items()}
            best = max(cells, key=lambda label: cells[label].value)
            a = cell(mixed, key)
            rows.append(claim_row(f"mixed sub-caption lengths (1–3) beat the best fixed length on {name} t2i "
                                  "R@1", a, cells[best], f"mixed {text(a)} vs {best} {text(cells[best])}"))
    return rows


def verdicts(runs: dict) -> list[tuple[str, str, str]]:
    """(claim, verdict, numbers): the judged claims with Holm's correction over all of them."""
    rows = claims(runs)
    judged = iter(stats.judge([r.judged for r in rows if r.judged]))
    out = []
    for row in rows:
        if row.judged is None:
            out.append((row.claim, row.set_aside, row.numbers))
            continue
        v = next(judged)
        out.append((row.claim, v.verdict,
                    (f"{row.numbers}; paired A − B {difference_text(v.claim.difference)}, "
                     f"Holm-adjusted p {v.p_adjusted:.3f}")))
    return out


def write_report(config, out: Path) -> list[Path]:
    runs = collect(config, Path(config.runs_dir if Path(config.runs_dir).is_absolute()
                                else Path(__file__).resolve().parents[1] / config.runs_dir) / config.name)
    out.mkdir(parents=True, exist_ok=True)
    planned = len(config.seeds) * len(config.methods) + sum(len(r) for r in config.ablations.values()) * len(
        config.ablation_seeds)
    lines = [f"# Study `{config.name}`: FLAIR against its baselines at one CPU budget", "",
             (f"Budget per run: `{' '.join(config.budget)}` over `{', '.join(config.base_params)}` (each "
              f"method with its recipe); seeds {list(config.seeds)} (ablations: "
              f"{list(config.ablation_seeds)}), each seed its own generated data and training seed. Values "
              "in percent on the built-in test split: the mean over seeds [95 % interval of that mean: a "
              "two-level bootstrap over seeds, then clusters of queries (twin pairs) or images] (chance, and "
              "for segmentation and classification the majority-class level) n = seeds. Retrieval in each "
              "method's own scoring mode; segmentation in every mode a method offers. Runs finished so far: "
              f"{sum(len(s) for s in runs.values())} of {planned}."),
             "", "## Main table", ""]
    specs = (*(c for c in MAIN_TABLE if "segmentation" not in c.key),
             *(Column(f"seg mIoU ({mode})", SEG.format(mode=mode)) for mode in ("patch", "attention")))
    methods = [m for m in config.methods if runs.get(("methods", m))]
    # the library's table builder, fed each method's seed means (and their two-level intervals) as its metrics
    table = main_table({m: seed_means(runs[("methods", m)], specs, METHODS[m].primary_mode) for m in methods},
                       {m: METHODS[m].primary_mode for m in methods}, specs)
    lines += ["| method | " + " | ".join(c.label for c in table.columns) + " |",
              "|---|" + "---:|" * len(table.columns)]
    for m in table.runs:
        seeds = len(runs[("methods", m)])
        cells = [f"{table.cell(m, c.key)} n={seeds}" if table.value(m, c.key) is not None else "—"
                 for c in table.columns]
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    lines += ["", "## Claims", "",
              ("Each claim is a paired difference A − B: the same test queries and the same seeds, resampled "
               "together (seeds, then clusters), with its 95 % interval, the ratio A / B and a p-value. A "
               "claim holds only when its Holm-adjusted p (over every judged claim below) is under 0.05 and "
               "any stated size (+10 mIoU, 2×) is met; a claim whose numbers are not beyond chance is not "
               "judged. The best baseline is picked on the test split itself: its best case."), "",
              "| claim | verdict | numbers |", "|---|---|---|"]
    lines += [f"| {claim} | **{verdict}** | {numbers} |" for claim, verdict, numbers in verdicts(runs)]
    lines += ["",
              f"## Ablations (FLAIR at its recipe, one setting changed; seeds {list(config.ablation_seeds)})",
              "", (f"Published: ViT-B/16 on CC3M-recap, millions of pairs; every published value here is "
                   f"**secondary** [S] ({PAPER} §3–4: COCO T2I / VOC20 mIoU / ImageNet top-1); ours: the CPU "
                   "budget above on the built-in data. Fine-grained retrieval in FLAIR's mode and in global "
                   "mode: an MPS-only run trains only the global embedding, a TCS-only run only FLAIR's "
                   "pooling."), "",
              ("| group | setting | fine-grained t2i R@1 (flair mode) | fine-grained t2i R@1 (global mode) | "
               "long t2i R@1 | seg mIoU (best mode) | cls top-1 | paper [S] |"),
              "|---|---|---:|---:|---:|---:|---:|---|"]
    for group, labels in config.ablations.items():
        for label in labels:
            seeds = runs.get((group, label))
            if not seeds:
                lines.append(f"| {group} | {label} | not run yet | | | | | |")
                continue
            flair = next(iter(seeds.values()))["method"] == "flair"
            seg = best_mode_cell(seeds, SEG)
            cells = [cell(seeds, FINE, "flair") if flair else None, cell(seeds, FINE, "global"),
                     cell(seeds, LONG)]
            lines.append(f"| {group} | {label} | " + " | ".join(text(c) for c in cells)
                         + f" | {text(seg[1]) + f' ({seg[0]})' if seg else '—'} | {text(cell(seeds, CLS))} | "
                         f"{published(group, label)} |")
    front_lines, front_plot = pareto_front(runs, config, out)
    compute_lines, compute_plot = equal_compute(runs, config, out)
    lines += compute_lines + front_lines
    files = [out / "report.md", out / "results.csv"]
    files += [p for p in (curve(runs, config, "k", out), curve(runs, config, "length", out), front_plot,
                          compute_plot) if p]
    if (p := validation_curves(runs, config, out)) is not None:
        files.append(p)
    lines += ["", *[f"![{p.stem}]({p.name})" for p in files[2:]], ""]
    files[0].write_text("\n".join(lines))
    write_results(runs, files[1])
    return files


RESULT_FIELDS = ("group", "setting", "seed", "benchmark", "metric", "value", "ci_low", "ci_high", "chance",
                 "majority")


def write_results(runs: dict, path: Path) -> None:
    """One row per (configuration, seed, benchmark, headline metric in every mode): the value with its
    interval over clusters (or images) and reference levels; a row with seed `all` holds the seed mean and its
    two-level interval."""
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=RESULT_FIELDS)
        writer.writeheader()
        for (group, label), seeds in runs.items():
            keys = sorted({k for entry in seeds.values() for k in entry["metrics"] if is_headline(k)})
            for key in keys:
                family, benchmark, mode, metric = key.split("/")
                c = cell(seeds, metric_key(family, benchmark, "{mode}", metric), mode)
                if c is None:
                    continue
                for seed, units in c.units.items():
                    one = stats.estimate([units])
                    writer.writerow(result_row(group, label, seed, benchmark, f"{mode}/{metric}", one, c))
                writer.writerow(result_row(group, label, "all", benchmark, f"{mode}/{metric}", c.estimate, c))


def result_row(group, label, seed, benchmark, metric, e: stats.Estimate, c: Cell) -> dict:
    return {"group": group, "setting": label, "seed": seed, "benchmark": benchmark, "metric": metric,
            "value": round(e.value, 4), "ci_low": round(e.low, 4), "ci_high": round(e.high, 4),
            "chance": "" if c.chance is None else round(c.chance, 4),
            "majority": "" if c.majority is None else round(c.majority, 4)}


def spread(cells: list[Cell]) -> list[list[float]]:
    """Asymmetric error bars (below, above) from cells' intervals."""
    return [[c.value - c.low for c in cells], [c.high - c.value for c in cells]]


def flair_configurations(runs: dict, config) -> dict[str, dict]:
    """label -> {"seeds", "params"} for each distinct FLAIR run of the ablations (one cached run may stand for
    several rows: its first label names it)."""
    out, seen = {}, set()
    for group, labels in config.ablations.items():
        for label in labels:
            seeds = runs.get((group, label))
            if not seeds or any(e["method"] != "flair" for e in seeds.values()):
                continue
            dirs = tuple(sorted(str(e["dir"]) for e in seeds.values()))
            if dirs not in seen:
                seen.add(dirs)
                entry = next(iter(seeds.values()))
                out[label] = {"seeds": seeds, "params": entry["config"]}
    return out


def pareto_front(runs: dict, config, out: Path) -> tuple[list[str], Path | None]:
    """FLAIR's configurations as trials of an Optuna two-objective study (fine-grained vs long-caption t2i
    R@1, both maximised) over the sweep's space; Optuna's Pareto front (`best_trials`) as a table and a plot.

    The study is rebuilt in memory from the finished runs each time the report is written: it is a view of the
    runs, not a search (no trial here was sampled)."""
    import optuna

    from flair_lab.sweeps import load_sweep_config

    space = load_sweep_config(Path(__file__).resolve().parents[1] / config.sweep_file).space
    configurations = flair_configurations(runs, config)
    if len(configurations) < 2:
        return [], None
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(directions=["maximize", "maximize"], study_name=f"{config.name}-pareto")
    distributions = {key: spec.distribution() for key, spec in space.items()}
    cells = {}
    for label, entry in configurations.items():
        params = {}
        for key in space:
            value = entry["params"]
            for part in key.split("."):
                value = value.get(part) if isinstance(value, dict) else None
            params[key] = value
        if any(v is None for v in params.values()):
            continue  # a setting outside the sweep's space (e.g. a FLAIR variant without that knob)
        cells[label] = (cell(entry["seeds"], FINE), cell(entry["seeds"], LONG))
        study.add_trial(optuna.trial.create_trial(params=params, distributions=distributions,
                                                  values=[c.value for c in cells[label]],
                                                  user_attrs={"label": label}))
    front = sorted((t for t in study.best_trials), key=lambda t: -t.values[0])
    on_front = {t.user_attrs["label"] for t in front}
    lines = ["", "## Pareto front: fine-grained vs long-caption retrieval (Optuna, two objectives)", "",
             ("Each distinct FLAIR configuration of the ablations above is one trial of a two-objective "
              f"Optuna study over the sweep's space ({', '.join(space)}; `{config.sweep_file}`), both "
              "objectives maximised; the front is Optuna's `best_trials`, judged on the means. Points whose "
              f"intervals overlap are not separable: the front is a description of {len(cells)} runs, not a "
              "search."), "",
             "| on front | setting | " + " | ".join(key.rsplit(".", 1)[-1] for key in space)
             + " | fine-grained t2i R@1 | long t2i R@1 |",
             "|---|---|" + "---|" * len(space) + "---:|---:|"]
    for trial in sorted(study.trials, key=lambda t: (t.user_attrs["label"] not in on_front, -t.values[0])):
        label = trial.user_attrs["label"]
        values = " | ".join(f"{v:.2f}" if isinstance(v, float) else str(v) for v in trial.params.values())
        lines.append(f"| {'★' if label in on_front else ''} | {label} | {values} | "
                     + " | ".join(text(c) for c in cells[label]) + " |")
    fig, ax = plt.subplots(figsize=(5.5, 4))
    for label, (fine, long) in cells.items():
        color = "tab:red" if label in on_front else "tab:gray"
        ax.errorbar(fine.value, long.value, xerr=spread([fine]), yerr=spread([long]), fmt="o", color=color,
                    capsize=2, alpha=0.9 if label in on_front else 0.5)
        ax.annotate(label, (fine.value, long.value), fontsize=6, xytext=(3, 3), textcoords="offset points")
    clip = runs.get(("methods", "clip"))
    if clip and (c := cell(clip, LONG)) and (f := cell(clip, FINE)):
        ax.plot([f.value], [c.value], "*", color="tab:blue", markersize=10, label="CLIP (long captions)")
        ax.legend(fontsize=7)
    ax.set_xlabel("fine-grained t2i R@1 (%)")
    ax.set_ylabel("long-caption t2i R@1 (%)")
    ax.set_title("FLAIR configurations: Pareto front in red (95 % intervals)", fontsize=9)
    fig.tight_layout()
    path = out / "pareto_front.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return lines, path


def curve(runs: dict, config, group: str, out: Path) -> Path | None:
    labels = [label for label in config.ablations.get(group, {}) if runs.get((group, label))]
    if len(labels) < 2:
        return None
    fig, ax = plt.subplots(figsize=(5, 3.2))
    for key, name in ((FINE, "fine-grained t2i R@1"), (LONG, "long t2i R@1")):
        cells = [cell(runs[(group, label)], key) for label in labels]
        ax.errorbar(labels, [c.value for c in cells], yerr=spread(cells), fmt="o-", capsize=3, label=name)
    ax.set_ylabel("%")
    ax.set_title(f"FLAIR: {group} (95 % intervals)", fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    path = out / f"{group}_curve.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def validation_curves(runs: dict, config, out: Path) -> Path | None:
    fig, ax = plt.subplots(figsize=(5, 3.2))
    drawn = False
    for m in config.methods:
        seeds = runs.get(("methods", m)) or {}
        entry = seeds.get(min(seeds)) if seeds else None
        path = entry["dir"] / "val_metrics.jsonl" if entry else None
        if path is None or not path.is_file():
            continue
        key = own(FINE, m)
        points = [json.loads(line) for line in path.read_text().splitlines()]
        ax.plot([p["step"] for p in points if key in p], [p[key] for p in points if key in p], "o-", label=m)
        drawn = True
    if not drawn:
        plt.close(fig)
        return None
    ax.set_xlabel("step")
    ax.set_ylabel("val fine-grained t2i R@1 (%)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    path = out / "validation_curves.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def timed_validations(run_dir: Path, key: str) -> list[tuple[float, float]]:
    """(training seconds so far, validation value) at each validation of a run. A step's logged seconds are
    its wall time, data waiting and the validation before it included; a run trains on one thread, so wall
    time is its CPU time."""
    steps, validations = run_dir / "metrics.jsonl", run_dir / "val_metrics.jsonl"
    if not (steps.is_file() and validations.is_file()):
        return []
    elapsed, total = {}, 0.0
    for line in steps.read_text().splitlines():
        record = json.loads(line)
        total += record.get("seconds", 0.0)
        elapsed[int(record["step"])] = total
    points = [json.loads(line) for line in validations.read_text().splitlines()]
    return [(elapsed[p["step"]], p[key]) for p in points if key in p and p["step"] in elapsed]


def equal_compute(runs: dict, config, out: Path) -> tuple[list[str], Path | None]:
    """Validation fine-grained t2i R@1 against training CPU time for every method, and who leads at three
    equal times (a third, two thirds and all of the shortest run's time): equal steps are not equal
    compute."""
    curves: dict[str, dict[int, list[tuple[float, float]]]] = {}
    for m in config.methods:
        for seed, entry in (runs.get(("methods", m)) or {}).items():
            if points := timed_validations(entry["dir"], own(FINE, m)):
                curves.setdefault(m, {})[seed] = points
    if len(curves) < 2:
        return [], None
    shortest = min(points[-1][0] for seeds in curves.values() for points in seeds.values())
    times = [shortest / 3, 2 * shortest / 3, shortest]

    def at(points: list[tuple[float, float]], time_limit: float) -> float | None:
        reached = [value for seconds, value in points if seconds <= time_limit]  # the last validation so far
        return reached[-1] if reached else None

    lines = ["", "## Equal compute: validation fine-grained t2i R@1 at equal training time", "",
             ("Equal steps are not equal compute (FLAIR and DreamLIP encode K sub-captions per image). Each "
              "method's latest validation (val split, own mode) reached by the time shown, mean over seeds "
              "[each seed]; one thread per run, so seconds are CPU-seconds. Validation keeps no per-query "
              "records: no interval here."), "",
             "| method | " + " | ".join(f"at {t / 60:.1f} CPU-min" for t in times) + " | whole run |",
             "|---|" + "---:|" * (len(times) + 1)]
    leaders = []
    for t in times:
        means = {m: mean(v) for m, seeds in curves.items()
                 if (v := [x for points in seeds.values() if (x := at(points, t)) is not None]) and
                 len(v) == len(seeds)}
        leaders.append(max(means, key=means.get) if means else "—")
    for m, seeds in curves.items():
        cells = []
        for t in [*times, float("inf")]:
            values = [at(points, t) for points in seeds.values()]
            cells.append("—" if None in values
                         else f"{mean(values):.2f} [{', '.join(f'{v:.2f}' for v in values)}]")
        whole = mean(points[-1][0] for points in seeds.values()) / 60
        lines.append(f"| {m} | " + " | ".join(cells[:-1]) + f" | {cells[-1]} in {whole:.1f} CPU-min |")
    lines += ["", "Leader at each time: " + ", ".join(f"{t / 60:.1f} min: {m}"
                                                      for t, m in zip(times, leaders, strict=True)) + "."]
    fig, ax = plt.subplots(figsize=(5, 3.2))
    for m, seeds in curves.items():
        for i, points in enumerate(seeds.values()):
            ax.plot([s / 60 for s, _ in points], [v for _, v in points], "o-",
                    color=f"C{list(curves).index(m)}", alpha=0.8, markersize=3, label=m if i == 0 else None)
    ax.set_xlabel("training CPU-minutes")
    ax.set_ylabel("val fine-grained t2i R@1 (%)")
    ax.set_title("Validation against compute (each seed a line)", fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    path = out / "equal_compute.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return lines, path
