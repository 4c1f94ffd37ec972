"""The equal-budget study's report: the main table in the paper's layout, the ablations in the paper's order with
its published numbers beside ours, K and length curves, validation curves, and a verdict per paper claim
computed from the numbers (holds / does not hold / within noise). Markdown + CSV + PNG in one folder.

Across seeds a cell is the mean of the seeds' values; its interval is the mean of the seeds' 95 % bootstrap
bounds (over queries), and the seeds' own values are listed in the CSV. A claim holds only when the intervals
are apart AND every seed agrees in direction; mIoU and top-1 carry no interval, so claims on them need the
stated margin.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from statistics import mean

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from flair_core.evaluation import CHANCE, CI_HIGH, CI_LOW
from flair_core.evaluation.comparison import format_cell
from flair_core.evaluation.headline import MAIN_TABLE, metric_key, own_mode_key
from flair_core.methods import METHODS
from flair_core.run_config import read_run_config
from flair_lab import paper_numbers

PAPER = "../shared/reference/paper_numbers.md"
# Our ablation settings (params/study.yaml) and the paper's row of the same setting in paper_numbers.yaml; the
# paper's labels differ from ours, so the pairing is stated here.
PAPER_LOSS_ROWS = {"global sigmoid only": "global sigmoid loss, one caption",
                   "MPS only": "global + multi-caption (MPS, no TCS)",
                   "TCS only": "text-conditioned loss only (TCS)",
                   "TCS + MPS, w 0.5": "FLAIR full (TCS + MPS + multi-caption + diverse sampling)"}
PAPER_LOSS_COLUMNS = ("coco_t2i_r1", "voc20_miou", "imagenet_top1")
PAPER_K_ROWS = {"K 2": 2, "K 8": 8}
SEG_MARGIN = 10.0  # mIoU points a segmentation claim needs (no interval for mIoU)
FINE, LONG = own_mode_key("builtin_fine_grained", "t2i_r1"), own_mode_key("builtin_long", "t2i_r1")
SEG_PATCH = metric_key("segmentation", "builtin_segmentation", "patch", "miou")
SEG_ATTENTION = metric_key("segmentation", "builtin_segmentation", "attention", "miou")


def collect(config, runs_dir: Path) -> dict[tuple[str, str], dict[int, dict]]:
    """(group, label) -> seed -> {"metrics": flat metrics, "method": name, "config": resolved config, "dir": run
    folder} of finished runs."""
    out: dict[tuple[str, str], dict[int, dict]] = {}
    for record in sorted(runs_dir.glob("*/study.json")):
        folder = record.parent
        results = [folder / "eval" / f"{b}.json" for b in config.benchmarks]
        if not all(r.is_file() for r in results):
            continue  # not finished: the report shows only finished runs
        metrics: dict = {}
        for r in results:
            metrics.update(json.loads(r.read_text()))
        resolved = read_run_config(folder)
        for entry in json.loads(record.read_text()):
            if entry["study"] == config.name:
                out.setdefault((entry["group"], entry["label"]), {})[entry["seed"]] = {
                    "metrics": metrics, "method": resolved.method.name, "config": resolved.model_dump(mode="json"),
                    "dir": folder}
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


def cell(seeds: dict[int, dict], key: str) -> dict | None:
    """Mean over seeds of a metric (in each run's own mode), the mean interval, chance, and the seeds' values."""
    values = []
    for entry in seeds.values():
        name = own(key, entry["method"])
        if name not in entry["metrics"]:
            return None
        values.append({s: entry["metrics"].get(name + s) for s in ("", CI_LOW, CI_HIGH, CHANCE)})
    if not values:
        return None
    low = [v[CI_LOW] for v in values if v[CI_LOW] is not None]
    high = [v[CI_HIGH] for v in values if v[CI_HIGH] is not None]
    chance = [v[CHANCE] for v in values if v[CHANCE] is not None]
    return {"value": mean(v[""] for v in values), "low": mean(low) if len(low) == len(values) else None,
            "high": mean(high) if len(high) == len(values) else None, "chance": mean(chance) if chance else None,
            "seeds": [v[""] for v in values]}


def text(c: dict | None) -> str:
    return "—" if c is None else format_cell(c["value"], c["low"], c["high"], c["chance"])


def beyond_chance(c: dict) -> bool:
    return c["low"] is None or c["chance"] is None or c["low"] > c["chance"]


def compare(a: dict | None, b: dict | None, margin: float | None = None) -> str:
    """Is a above b? holds / does not hold / within noise, from the intervals; where there is none (mIoU, top-1),
    from `margin`: a gap below it does not hold. A claim about values that are not beyond chance is no evidence
    either way."""
    if a is None or b is None:
        return "not measured"
    if not (beyond_chance(a) and beyond_chance(b)):
        return "not beyond chance"
    seeds_agree = len(a["seeds"]) == len(b["seeds"]) and all(x > y for x, y in zip(a["seeds"], b["seeds"], strict=True))
    if a["low"] is not None and b["high"] is not None:
        if a["low"] > b["high"] and seeds_agree:
            return "holds"
        if a["high"] < b["low"]:
            return "does not hold"
        return "within noise"
    gap = a["value"] - b["value"]
    if margin is None:
        return "does not hold" if gap <= 0 else "within noise"
    if gap >= margin:  # no interval: the stated margin is the bar, and every seed must clear it the same way
        return "holds" if seeds_agree else "within noise"
    return "does not hold"


def verdicts(runs: dict) -> list[tuple[str, str, str]]:
    """(claim, verdict, the numbers behind it)."""
    method = {m: runs.get(("methods", m)) for m in METHODS}
    out = []
    flair_fine = cell(method["flair"], FINE) if method["flair"] else None
    rivals = {m: cell(method[m], FINE) for m in METHODS if METHODS[m].baseline and method.get(m)}
    if flair_fine and rivals:
        best = max(rivals, key=lambda m: rivals[m]["value"])
        paper_flair, paper_dreamlip = (paper_numbers.value("main_comparison", "docci_fg_t2i_r1", method=m)
                                       for m in ("FLAIR", "DreamLIP"))
        out.append(((f"FLAIR beats CLIP, FILIP and DreamLIP on fine-grained t2i R@1 (paper: DOCCI-FG "
                    f"{paper_flair} vs DreamLIP {paper_dreamlip})"), compare(flair_fine, rivals[best]),
                    f"FLAIR {text(flair_fine)} vs best baseline {best} {text(rivals[best])}"))
        doubled = flair_fine["value"] >= 2 * rivals[best]["value"] and compare(flair_fine, rivals[best]) == "holds"
        out.append(("target: FLAIR fine-grained ≥ 2× the best baseline, intervals apart",
                    "holds" if doubled else "does not hold",
                    f"FLAIR {flair_fine['value']:.2f} vs 2 × {rivals[best]['value']:.2f}"))
    tcs, glob = runs.get(("loss", "TCS only")), runs.get(("loss", "global sigmoid only"))
    if tcs and glob:
        a, b = cell(tcs, SEG_ATTENTION), cell(glob, SEG_PATCH)
        voc20 = [paper_loss(label, "voc20_miou") for label in ("TCS only", "global sigmoid only")]
        out.append(((f"TCS creates spatial grounding: TCS-only segmentation ≫ global-only (≥ {SEG_MARGIN:.0f} mIoU; "
                    f"paper {voc20[0]} vs {voc20[1]})"), compare(a, b, SEG_MARGIN),
                    f"TCS only (attention) {text(a)} vs global only (patch) {text(b)}"))
    if method["flair"] and method.get("clip"):
        a, b = cell(method["flair"], SEG_ATTENTION), cell(method["clip"], SEG_PATCH)
        out.append((f"target: FLAIR segmentation ≥ CLIP + {SEG_MARGIN:.0f} mIoU", compare(a, b, SEG_MARGIN),
                    f"FLAIR (attention) {text(a)} vs CLIP (patch) {text(b)}"))
        swept = next((seeds for (group, _), seeds in runs.items() if group == "sweep"), None)
        name, flair = ("the sweep's best FLAIR", swept) if swept else ("FLAIR's recipe", method["flair"])
        clip = {seed: entry for seed, entry in method["clip"].items() if seed in flair}  # the same data seeds
        a, b = cell(flair, LONG), cell(clip, LONG) if clip else None
        if a and b:
            verdict = ("not beyond chance" if not (beyond_chance(a) and beyond_chance(b))
                       else "holds" if b["value"] - a["value"] <= 5 else "does not hold")
            out.append((f"target: {name} long-caption t2i R@1 within 5 points of CLIP on full captions", verdict,
                        f"{name} {text(a)} vs CLIP {text(b)} (seeds {sorted(flair)})"))
    k2, k8 = runs.get(("k", "K 2")), runs.get(("k", "K 8"))
    if k2 and k8:
        a, b = cell(k8, FINE), cell(k2, FINE)
        claim = f"more sub-captions help: K 8 > K 2 (paper: COCO T2I {paper_k('K 8')} vs {paper_k('K 2')})"
        out.append((claim, compare(a, b), f"K 8 {text(a)} vs K 2 {text(b)} (fine-grained t2i R@1)"))
    mixed = runs.get(("length", "mixed 1–3"))
    fixed = {label: runs.get(("length", label)) for label in ("fixed 1", "fixed 2", "fixed 3")}
    if mixed and all(fixed.values()):
        results = []
        for key, name in ((FINE, "fine-grained"), (LONG, "long")):
            best = max(fixed, key=lambda f: cell(fixed[f], key)["value"])
            results.append((name, best, compare(cell(fixed[best], key), cell(mixed, key))))
        behind = [r for r in results if r[2] == "holds"]  # a fixed length beyond mixed on some benchmark
        out.append((("mixed sub-caption lengths keep both local detail and global context (not beaten by any "
                    "fixed length on fine-grained or long retrieval)"), "does not hold" if behind else "holds",
                    "; ".join(f"{name}: best fixed = {best}, fixed beyond mixed: {v}" for name, best, v in results)))
    return out


def write_report(config, out: Path) -> list[Path]:
    runs = collect(config, Path(config.runs_dir if Path(config.runs_dir).is_absolute()
                                else Path(__file__).resolve().parents[1] / config.runs_dir) / config.name)
    out.mkdir(parents=True, exist_ok=True)
    lines = [f"# Study `{config.name}`: FLAIR against its baselines at one CPU budget", "",
             (f"Budget per run: `{' '.join(config.budget)}` over `{', '.join(config.base_params)}` (each method "
             f"with its recipe); data seeds {list(config.seeds)} (ablations: {list(config.ablation_seeds)}). "
             "Values in percent on the built-in test split: mean over seeds [mean 95 % bootstrap interval] "
             "(chance). Retrieval in each method's own scoring mode; segmentation mIoU in patch mode (FLAIR "
             "also in attention mode). Runs finished so far: "
             f"{sum(len(s) for s in runs.values())} of {len(config.seeds) * len(config.methods) + sum(len(r) for r in config.ablations.values()) * len(config.ablation_seeds)}."),
             "", "## Main table", ""]
    columns = [(c.label, c.key) for c in MAIN_TABLE] + [("seg mIoU (attention)", SEG_ATTENTION)]
    lines += ["| method | " + " | ".join(label for label, _ in columns) + " |", "|---|" + "---:|" * len(columns)]
    rows = []
    for m in config.methods:
        seeds = runs.get(("methods", m))
        if seeds:
            cells = [cell(seeds, key) for _, key in columns]
            lines.append(f"| {m} ({len(seeds)} seed{'s' if len(seeds) > 1 else ''}) | " + " | ".join(text(c) for c in cells) + " |")
            rows.append(["methods", m, len(seeds), *[c["value"] if c else "" for c in cells]])
    lines += ["", "## Claims", "", "| claim | verdict | numbers |", "|---|---|---|"]
    lines += [f"| {claim} | **{verdict}** | {numbers} |" for claim, verdict, numbers in verdicts(runs)]
    lines += ["", f"## Ablations (FLAIR at its recipe, one setting changed; seeds {list(config.ablation_seeds)})",
              "", (f"Published: ViT-B/16 on CC3M-recap, millions of pairs, **secondary** [S] values ({PAPER} §3–4: "
              "COCO T2I / VOC20 mIoU / ImageNet top-1); ours: the CPU budget above on the built-in data."), "",
              "| group | setting | fine-grained t2i R@1 | long t2i R@1 | seg mIoU (attention) | cls top-1 | paper [S] |",
              "|---|---|---:|---:|---:|---:|---|"]
    for group, labels in config.ablations.items():
        for label in labels:
            seeds = runs.get((group, label))
            if not seeds:
                lines.append(f"| {group} | {label} | not run yet | | | | |")
                continue
            keys = [FINE, LONG, SEG_ATTENTION if "global" not in label else SEG_PATCH,
                    MAIN_TABLE[-1].key]
            cells = [cell(seeds, k) for k in keys]
            lines.append(f"| {group} | {label} | " + " | ".join(text(c) for c in cells)
                         + f" | {published(group, label)} |")
            rows.append([group, label, len(seeds), *[c["value"] if c else "" for c in cells]])
    front_lines, front_plot = pareto_front(runs, config, out)
    lines += front_lines
    files = [out / "report.md", out / "results.csv"]
    files += [p for p in (curve(runs, config, "k", out), curve(runs, config, "length", out), front_plot) if p]
    if (p := validation_curves(runs, config, out)) is not None:
        files.append(p)
    lines += ["", *[f"![{p.stem}]({p.name})" for p in files[2:]], ""]
    files[0].write_text("\n".join(lines))
    with open(files[1], "w", newline="") as f:
        csv.writer(f).writerows([["group", "setting", "seeds", "fine-grained t2i R@1", "long t2i R@1",
                                  "seg mIoU", "cls top-1"], *rows])
    return files


def spread(cells: list[dict]) -> list[list[float]]:
    """Asymmetric error bars (below, above) from cells' intervals; none where a cell has no interval."""
    return [[c["value"] - (c["low"] if c["low"] is not None else c["value"]) for c in cells],
            [(c["high"] if c["high"] is not None else c["value"]) - c["value"] for c in cells]]


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
    """FLAIR's configurations as trials of an Optuna two-objective study (fine-grained vs long-caption t2i R@1,
    both maximised) over the sweep's space; Optuna's Pareto front (`best_trials`) as a table and a plot.

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
                                                  values=[c["value"] for c in cells[label]],
                                                  user_attrs={"label": label}))
    front = sorted((t for t in study.best_trials), key=lambda t: -t.values[0])
    on_front = {t.user_attrs["label"] for t in front}
    lines = ["", "## Pareto front: fine-grained vs long-caption retrieval (Optuna, two objectives)", "",
             (f"Each distinct FLAIR configuration of the ablations above is one trial of a two-objective Optuna "
              f"study over the sweep's space ({', '.join(space)}; `{config.sweep_file}`), both objectives "
              f"maximised; the front is Optuna's `best_trials`, judged on the means. Points whose intervals "
              f"overlap are not separable: the front is a description of {len(cells)} runs, not a search."), "",
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
        ax.errorbar(fine["value"], long["value"], xerr=spread([fine]), yerr=spread([long]), fmt="o", color=color,
                    capsize=2, alpha=0.9 if label in on_front else 0.5)
        ax.annotate(label, (fine["value"], long["value"]), fontsize=6, xytext=(3, 3), textcoords="offset points")
    clip = runs.get(("methods", "clip"))
    if clip and (c := cell(clip, LONG)) and (f := cell(clip, FINE)):
        ax.plot([f["value"]], [c["value"]], "*", color="tab:blue", markersize=10, label="CLIP (long captions)")
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
        ax.errorbar(labels, [c["value"] for c in cells], yerr=spread(cells), fmt="o-", capsize=3, label=name)
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
