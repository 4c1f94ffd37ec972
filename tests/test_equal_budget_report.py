"""The study report's judgement on hand-made runs: verdicts from intervals, seeds and chance; the long-caption
target judged on the sweep's configuration against CLIP on the same seeds; Optuna's Pareto front over FLAIR's
configurations."""

import json
from pathlib import Path

import yaml

from flair_lab.equal_budget_report import PAPER_K_ROWS, PAPER_LOSS_ROWS, compare, published, write_report
from flows.equal_budget_study import StudyConfig, load_study_config
from tests.helpers.paths import REPO

FINE, LONG = "builtin_fine_grained", "builtin_long"
MODE = {"flair": "flair", "clip": "global"}


def interval(value: float, half: float = 1.0, chance: float = 0.5, seeds: tuple[float, ...] | None = None) -> dict:
    return {"value": value, "low": value - half, "high": value + half, "chance": chance, "seeds": list(seeds or [value])}


def test_a_claim_holds_only_beyond_the_intervals_with_every_seed_agreeing_and_beyond_chance():
    assert compare(interval(10), interval(5)) == "holds"
    assert compare(interval(5), interval(10)) == "does not hold"
    assert compare(interval(6), interval(5)) == "within noise"  # intervals overlap
    assert compare(interval(10, seeds=(12, 4)), interval(5, seeds=(5, 5))) == "within noise"  # a seed disagrees
    assert compare(interval(10, chance=20), interval(5)) == "not beyond chance"
    no_interval = {"low": None, "high": None, "chance": None}
    assert compare({**interval(30), **no_interval}, {**interval(15), **no_interval}, margin=10) == "holds"
    assert compare({**interval(20), **no_interval}, {**interval(15), **no_interval}, margin=10) == "does not hold"
    assert compare({**interval(30, seeds=(50, 10)), **no_interval}, {**interval(15, seeds=(10, 20)), **no_interval},
                   margin=10) == "within noise"  # the mean clears the margin, one seed goes the other way


def fake_run(root: Path, name: str, method: str, rows: list[tuple[str, str, int]], fine: float, long: float,
             settings: dict) -> None:
    folder = root / name
    (folder / "eval").mkdir(parents=True)
    for benchmark, value in ((FINE, fine), (LONG, long)):
        key = f"retrieval/{benchmark}/{MODE[method]}/t2i_r1"
        (folder / "eval" / f"{benchmark}.json").write_text(json.dumps(
            {key: value, f"{key}_ci_low": value - 1, f"{key}_ci_high": value + 1, f"{key}_chance": 0.5}))
    (folder / "config.yaml").write_text(yaml.safe_dump({"method": {"name": method, "settings": settings.get("method", {})},
                                                         "sampling": settings.get("sampling", {})}))
    (folder / "study.json").write_text(json.dumps([{"study": "s", "group": g, "label": label, "seed": seed, "key": name}
                                                   for g, label, seed in rows]))


def test_report_puts_optunas_pareto_front_and_judges_the_long_target_on_the_sweeps_configuration(tmp_path):
    runs = tmp_path / "runs" / "s"
    sampling = {"k": 4, "max_sentences": 2, "length_mode": "random"}
    recipe = {"method": {"tcs_weight": 1.0}, "sampling": sampling}
    fake_run(runs, "recipe", "flair", [("methods", "flair", 0), ("k", "K 4", 0)], 6.0, 6.0, recipe)
    fake_run(runs, "k8", "flair", [("k", "K 8", 0)], 4.0, 12.0, {**recipe, "sampling": {**sampling, "k": 8}})
    fake_run(runs, "k2", "flair", [("k", "K 2", 0)], 3.0, 5.0, {**recipe, "sampling": {**sampling, "k": 2}})  # dominated
    fake_run(runs, "swept", "flair", [("sweep", "sweep best", 0)], 5.0, 10.0,
             {"method": {"tcs_weight": 0.75}, "sampling": {**sampling, "k": 7}})
    fake_run(runs, "clip0", "clip", [("methods", "clip", 0)], 2.0, 14.0, {"sampling": sampling})
    fake_run(runs, "clip1", "clip", [("methods", "clip", 1)], 2.0, 40.0, {"sampling": sampling})  # another seed
    config = StudyConfig(name="s", base_params=("params/cpu.yaml",), budget=("train.epochs=2",), seeds=(0,),
                         methods=("flair", "clip"), ablations={"k": {"K 2": (), "K 4": (), "K 8": ()},
                                                               "sweep": {"sweep best": ()}},
                         benchmarks=(FINE, LONG), runs_dir=str(tmp_path / "runs"))

    files = write_report(config, tmp_path / "report")

    report = (tmp_path / "report" / "report.md").read_text()
    front = report[report.index("## Pareto front"):]
    cells = [line.split(" | ") for line in front.splitlines() if line.startswith("| ")]
    rows = {row[1]: row[0] == "| ★" for row in cells if row[1] in ("K 2", "K 4", "K 8", "sweep best")}
    assert rows == {"K 4": True, "K 8": True, "sweep best": True, "K 2": False}  # K 2 is dominated by K 4
    assert (tmp_path / "report" / "pareto_front.png") in files
    # The sweep's configuration (long 10) against CLIP on seed 0 only (14), not the mean with seed 1 (27): holds.
    target = next(line for line in report.splitlines() if "within 5 points" in line)
    assert "the sweep's best FLAIR" in target and "**holds**" in target and "(seeds [0])" in target


def test_the_published_numbers_come_from_paper_numbers_yaml_for_every_paired_setting_of_the_shipped_study():
    ablations = load_study_config(REPO / "params" / "study.yaml").ablations
    assert set(PAPER_LOSS_ROWS) <= set(ablations["loss"]) and set(PAPER_K_ROWS) <= set(ablations["k"])
    cells = [published("loss", label) for label in PAPER_LOSS_ROWS]
    cells += [published("k", label) for label in PAPER_K_ROWS]
    assert "—" not in cells  # every pairing finds its row in the YAML (a lost row raises KeyError)
    assert published("k", "K 8") == "COCO T2I 37.7" and published("loss", "MPS only") == "32.9 / 1.7 / 27.9"
    assert published("loss", "TCS + MPS, w 0.25") == published("length", "fixed 1") == "—"  # none published
