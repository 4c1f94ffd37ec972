"""The study report's judgement on hand-made runs with per-query records: cells as seed means with two-level
intervals, claims as paired differences with Holm's correction, results.csv one row per seed and metric,
Optuna's Pareto front over FLAIR's configurations."""

import csv
import json
from pathlib import Path

import numpy as np
import yaml

from flair_core.evaluation.records import records_path, save_records
from flair_lab.equal_budget_report import PAPER_K_ROWS, PAPER_LOSS_ROWS, published, write_report
from flows.equal_budget_study import StudyConfig, load_study_config
from tests.helpers.paths import REPO

FINE, LONG = "builtin_fine_grained", "builtin_long"
MODE = {"flair": "flair", "clip": "global"}
QUERIES = 400  # in 200 twin-pair clusters


def hits(percent: float, seed: int = 0) -> np.ndarray:
    """Which of the queries a run answers: the first `percent` % in a seeded order (so better runs answer a
    superset of worse runs' queries on the same seed)."""
    order = np.random.default_rng(seed).permutation(QUERIES)
    answered = np.zeros(QUERIES, bool)
    answered[order[: round(QUERIES * percent / 100)]] = True
    return answered


def fake_run(root: Path, name: str, method: str, rows: list[tuple[str, str, int]], fine: float, long: float,
             settings: dict, seed: int = 0) -> None:
    folder = root / name
    (folder / "eval").mkdir(parents=True)
    for benchmark, value in ((FINE, fine), (LONG, long)):
        key = f"retrieval/{benchmark}/{MODE[method]}/t2i_r1"
        (folder / "eval" / f"{benchmark}.json").write_text(json.dumps({key: value, f"{key}_chance": 0.5}))
        save_records(records_path(folder / "eval", benchmark), {
            "t2i/query": np.arange(QUERIES), "t2i/cluster": np.arange(QUERIES) // 2,
            f"{MODE[method]}/t2i/rank": np.where(hits(value, seed), 0, 9)})
    (folder / "config.yaml").write_text(yaml.safe_dump({"method": {"name": method,
                                                                   "settings": settings.get("method", {})},
                                                         "sampling": settings.get("sampling", {})}))
    (folder / "study.json").write_text(json.dumps([{"study": "s", "group": g, "label": label, "seed": seed,
                                                    "key": name}
                                                   for g, label, seed in rows]))


def study(tmp_path: Path, **fields) -> StudyConfig:
    return StudyConfig(name="s", base_params=("params/cpu.yaml",), budget=("train.epochs=2",),
                       benchmarks=(FINE, LONG), runs_dir=str(tmp_path / "runs"), **fields)


def claim_line(report: str, words: str) -> str:
    return next(line for line in report.splitlines() if line.startswith("| ") and words in line)


def test_claims_are_paired_differences_over_seeds_judged_with_holm(tmp_path):
    runs = tmp_path / "runs" / "s"
    recipe = {"method": {"tcs_weight": 0.5},
              "sampling": {"k": 4, "max_sentences": 2, "length_mode": "random"}}
    for seed, (flair_fine, clip_fine) in enumerate([(12.0, 5.0), (14.0, 6.0), (13.0, 5.5)]):
        fake_run(runs, f"flair{seed}", "flair", [("methods", "flair", seed)], flair_fine, 20.0, recipe, seed)
        fake_run(runs, f"clip{seed}", "clip", [("methods", "clip", seed)], clip_fine, 30.0, recipe, seed)
    write_report(study(tmp_path, seeds=(0, 1, 2), methods=("flair", "clip")), tmp_path / "report")
    report = (tmp_path / "report" / "report.md").read_text()

    main = claim_line(report, "| flair |")
    assert "13.00 [" in main and "n=3" in main  # the seed mean, with its seeds counted
    beats = claim_line(report, "FLAIR beats CLIP")
    assert "**holds**" in beats and "paired A − B +7.50 [" in beats and "3 seeds" in beats
    assert "Holm-adjusted p" in beats
    doubled = claim_line(report, "≥ 2× the best baseline")
    assert "**holds**" in doubled and "ratio 2.36 [" in doubled  # 13 / 5.5, its interval above 1.5
    long = claim_line(report, "within 5 points")
    assert "**does not hold**" in long  # FLAIR is 10 points behind on every query pair

    with open(tmp_path / "report" / "results.csv") as f:
        rows = list(csv.DictReader(f))
    flair = [r for r in rows if r["setting"] == "flair" and r["benchmark"] == FINE]
    assert [r["seed"] for r in flair] == ["0", "1", "2", "all"]
    assert [float(r["value"]) for r in flair] == [12.0, 14.0, 13.0, 13.0]
    assert all(float(r["ci_low"]) <= float(r["value"]) <= float(r["ci_high"]) for r in flair)
    assert {r["chance"] for r in flair} == {"0.5"} and {r["metric"] for r in flair} == {"flair/t2i_r1"}


def test_a_gap_that_one_seed_reverses_is_not_claimed(tmp_path):
    runs = tmp_path / "runs" / "s"
    for seed, (flair_fine, clip_fine) in enumerate([(12.0, 5.0), (4.0, 9.0)]):
        fake_run(runs, f"flair{seed}", "flair", [("methods", "flair", seed)], flair_fine, 20.0, {}, seed)
        fake_run(runs, f"clip{seed}", "clip", [("methods", "clip", seed)], clip_fine, 20.0, {}, seed)
    write_report(study(tmp_path, seeds=(0, 1), methods=("flair", "clip")), tmp_path / "report")
    beats = claim_line((tmp_path / "report" / "report.md").read_text(), "FLAIR beats CLIP")
    assert "**within noise**" in beats  # +1 point on average: seed 1 goes the other way


def test_report_puts_optunas_pareto_front_over_flairs_configurations(tmp_path):
    runs = tmp_path / "runs" / "s"
    sampling = {"k": 4, "max_sentences": 2, "length_mode": "random"}
    recipe = {"method": {"tcs_weight": 1.0}, "sampling": sampling}
    recipe_rows = [("methods", "flair", 0), ("k", "K 4", 0), ("loss", "TCS only", 0)]
    fake_run(runs, "recipe", "flair", recipe_rows, 6.0, 6.0, recipe)
    fake_run(runs, "k8", "flair", [("k", "K 8", 0)], 4.0, 12.0, {**recipe, "sampling": {**sampling, "k": 8}})
    # dominated
    fake_run(runs, "k2", "flair", [("k", "K 2", 0)], 3.0, 5.0, {**recipe, "sampling": {**sampling, "k": 2}})
    fake_run(runs, "swept", "flair", [("sweep", "sweep best", 0)], 5.0, 10.0,
             {"method": {"tcs_weight": 0.75}, "sampling": {**sampling, "k": 7}})
    fake_run(runs, "clip0", "clip", [("methods", "clip", 0), ("loss", "global sigmoid only", 0)], 2.0, 14.0,
             {"sampling": sampling})
    config = study(tmp_path, seeds=(0,), methods=("flair", "clip"),
                   ablations={"k": {"K 2": (), "K 4": (), "K 8": ()}, "sweep": {"sweep best": ()},
                              "loss": {"global sigmoid only": (), "TCS only": ()}})

    files = write_report(config, tmp_path / "report")

    report = (tmp_path / "report" / "report.md").read_text()
    front = report[report.index("## Pareto front"):]
    cells = [line.split(" | ") for line in front.splitlines() if line.startswith("| ")]
    rows = {row[1]: row[0] == "| ★" for row in cells if row[1] in ("K 2", "K 4", "K 8", "sweep best")}
    assert rows == {"K 4": True, "K 8": True, "sweep best": True, "K 2": False}  # K 2 is dominated by K 4
    assert (tmp_path / "report" / "pareto_front.png") in files
    assert "TCS creates spatial grounding" not in report  # no segmentation evaluated: that claim is not made


def test_the_published_numbers_come_from_paper_numbers_yaml_for_every_paired_setting_of_the_shipped_study():
    ablations = load_study_config(REPO / "params" / "study.yaml").ablations
    assert set(PAPER_LOSS_ROWS) <= set(ablations["loss"]) and set(PAPER_K_ROWS) <= set(ablations["k"])
    cells = [published("loss", label) for label in PAPER_LOSS_ROWS]
    cells += [published("k", label) for label in PAPER_K_ROWS]
    assert "—" not in cells  # every pairing finds its row in the YAML (a lost row raises KeyError)
    assert published("k", "K 8") == "COCO T2I 37.7" and published("loss", "MPS only") == "32.9 / 1.7 / 27.9"
    assert published("loss", "TCS + MPS, w 0.25") == published("length", "fixed 1") == "—"  # none published


def write_training_log(folder: Path, method: str, seconds_per_step: float, curve: dict[int, float]) -> None:
    """metrics.jsonl (every step's seconds) and val_metrics.jsonl (the validation curve) of a fake run."""
    key = f"retrieval/{FINE}/{MODE[method]}/t2i_r1"
    steps = max(curve)
    (folder / "metrics.jsonl").write_text("".join(json.dumps({"step": s, "seconds": seconds_per_step}) + "\n"
                                                  for s in range(1, steps + 1)))
    (folder / "val_metrics.jsonl").write_text("".join(json.dumps({"step": s, key: v}) + "\n"
                                                      for s, v in curve.items()))


def test_equal_compute_view_says_who_leads_at_equal_training_time(tmp_path):
    """CLIP's steps cost half of FLAIR's: at FLAIR's whole-run time CLIP has done twice the steps, and leads
    early on although FLAIR leads at equal steps."""
    runs = tmp_path / "runs" / "s"
    fake_run(runs, "flair0", "flair", [("methods", "flair", 0)], 8.0, 10.0, {})
    fake_run(runs, "clip0", "clip", [("methods", "clip", 0)], 5.0, 10.0, {})
    write_training_log(runs / "flair0", "flair", 1.0, {100: 1.0, 200: 4.0, 300: 8.0})
    write_training_log(runs / "clip0", "clip", 0.5,
                       {100: 2.0, 200: 3.0, 300: 4.0, 400: 4.5, 500: 5.0, 600: 5.0})
    files = write_report(study(tmp_path, seeds=(0,), methods=("flair", "clip")), tmp_path / "report")
    report = (tmp_path / "report" / "report.md").read_text()
    section = report[report.index("## Equal compute"):]
    # the shortest run is FLAIR's 300 s: at 100 s FLAIR has validated once (1.0), CLIP twice (3.0)
    assert claim_line(section, "| flair |").startswith("| flair | 1.00 [1.00] | 4.00 [4.00] | 8.00 [8.00] |")
    assert claim_line(section, "| clip |").startswith("| clip | 3.00 [3.00] | 4.50 [4.50] | 5.00 [5.00] |")
    assert "1.7 min: clip, 3.3 min: clip, 5.0 min: flair" in section
    assert (tmp_path / "report" / "equal_compute.png") in files
