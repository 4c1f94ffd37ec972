"""The comparison table (`flair_core.evaluation.comparison`): hand-made eval files -> the right number in the
right cell, one mode per cell, bad input; `flair compare`'s files; the main table of flair_lab.main_job_table
and the dashboard."""

import csv
import json
from pathlib import Path

import pytest
import yaml

from flair_cli import main
from flair_core.evaluation import comparison as compare
from flair_core.evaluation.headline import MAIN_TABLE
from flair_core.methods import METHODS
from tests.helpers.paths import REPO


def retrieval(benchmark: str, modes: dict[str, tuple[float, float]]) -> dict[str, float]:
    out = {f"retrieval/{benchmark}/num_images": 128, f"seconds/{benchmark}": 3.5}
    for mode, (t2i, i2t) in modes.items():
        out |= {f"retrieval/{benchmark}/{mode}/t2i_r1": t2i, f"retrieval/{benchmark}/{mode}/i2t_r1": i2t,
                f"retrieval/{benchmark}/{mode}/t2i_r5": 99.0,
                f"retrieval/{benchmark}/{mode}/strict_t2i_r1": 98.0}
    return out


def segmentation(modes: dict[str, float]) -> dict[str, float]:
    out = {"segmentation/builtin_segmentation/num_images": 32}
    for mode, miou in modes.items():
        out |= {f"segmentation/builtin_segmentation/{mode}/miou": miou,
                f"segmentation/builtin_segmentation/{mode}/pixel_accuracy": 97.0,
                f"segmentation/builtin_segmentation/{mode}/iou/circle": 96.0}
    return out


def classification(top1: float) -> dict[str, float]:
    return {"classification/builtin_classification/zeroshot/top1": top1,
            "classification/builtin_classification/zeroshot/top5": 95.0,
            "classification/builtin_classification/num_images": 60}


EVALS = {
    # FLAIR: its `flair` mode is shown even where `topk`/`global` score higher
    "flair": {"builtin_fine_grained": retrieval("builtin_fine_grained",
                                                {"flair": (40.0, 41.0), "global": (50.0, 51.0),
                                                 "topk": (60.0, 61.0)}),
              "builtin_long": retrieval("builtin_long", {"flair": (42.0, 43.0), "global": (10.0, 10.0)}),
              "builtin_segmentation": segmentation({"patch": 20.0, "attention": 25.0}),
              "builtin_classification": classification(70.0)},
    "clip": {"builtin_fine_grained": retrieval("builtin_fine_grained", {"global": (30.0, 31.0)}),
             "builtin_segmentation": segmentation({"patch": 15.0}),
             "builtin_classification": classification(80.0)},
    # FILIP: the mode with the higher mean of t2i and i2t R@1, per benchmark
    "filip": {"builtin_fine_grained": retrieval("builtin_fine_grained",
                                                {"filip": (20.0, 30.0), "global": (26.0, 26.0)}),
              "builtin_long": retrieval("builtin_long", {"filip": (12.0, 30.0), "global": (20.0, 20.0)})},
    "extra": {"builtin_fine_grained": retrieval("builtin_fine_grained", {"global": (1.0, 2.0)})},
}


@pytest.fixture
def eval_dir(tmp_path):
    root = tmp_path / "eval"
    for run, files in EVALS.items():
        (root / run).mkdir(parents=True)
        for benchmark, metrics in files.items():
            (root / run / f"{benchmark}.json").write_text(json.dumps(metrics))
    return root


@pytest.fixture
def runs_dir(tmp_path):
    root = tmp_path / "runs"
    for run, losses in {"flair": [5.0, 4.0, 3.0], "clip": [2.0, 1.5]}.items():
        (root / run).mkdir(parents=True)
        lines = [json.dumps({"step": i + 1, "loss/total": v, "lr": 0.1}) for i, v in enumerate(losses)]
        (root / run / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    return root


EXPECTED = {  # run -> column key -> value
    "flair": {"builtin_fine_grained/t2i_r1": 40.0, "builtin_fine_grained/i2t_r1": 41.0,
              "builtin_long/t2i_r1": 42.0, "builtin_long/i2t_r1": 43.0,
              "builtin_segmentation/miou": 25.0, "builtin_classification/top1": 70.0},
    "clip": {"builtin_fine_grained/t2i_r1": 30.0, "builtin_fine_grained/i2t_r1": 31.0,
             "builtin_segmentation/miou": 15.0, "builtin_classification/top1": 80.0},
    "filip": {"builtin_fine_grained/t2i_r1": 26.0, "builtin_fine_grained/i2t_r1": 26.0,
              "builtin_long/t2i_r1": 12.0, "builtin_long/i2t_r1": 30.0},
    "extra": {"builtin_fine_grained/t2i_r1": 1.0, "builtin_fine_grained/i2t_r1": 2.0},
}
COLUMNS = ["builtin_fine_grained/t2i_r1", "builtin_fine_grained/i2t_r1", "builtin_long/t2i_r1",
           "builtin_long/i2t_r1", "builtin_segmentation/miou", "builtin_classification/top1"]


def test_table_cells_modes_and_order(eval_dir):
    table = compare.build_table(compare.load_evals(eval_dir), METHODS.values())
    assert table.runs == ("flair", "clip", "filip", "extra")  # known methods first, then the rest sorted
    assert [c.key for c in table.columns] == COLUMNS
    assert [c.label for c in table.columns] == ["fine-grained t2i R@1", "fine-grained i2t R@1",
                                                "long t2i R@1", "long i2t R@1", "segmentation mIoU",
                                                "classification top-1"]
    for run in table.runs:
        for key in COLUMNS:
            assert table.value(run, key) == EXPECTED[run].get(key), (run, key)
    assert table.modes[("flair", "builtin_fine_grained")] == "flair"
    assert table.modes[("flair", "builtin_segmentation")] == "attention"
    assert table.modes[("filip", "builtin_fine_grained")] == "global"   # mean 26 > 25
    assert table.modes[("filip", "builtin_long")] == "filip"            # mean 21 > 20
    assert table.modes[("clip", "builtin_classification")] == "zeroshot"


def test_markdown_csv_json_and_loss_csv(eval_dir, runs_dir, tmp_path):
    table = compare.build_table(compare.load_evals(eval_dir), METHODS.values())
    written = compare.write_reports(table, tmp_path / "reports",
                                    compare.load_loss_curves(runs_dir, list(table.runs)))
    assert sorted(p.name for p in written) == ["compare.csv", "compare.json", "compare.md", "train_loss.csv"]
    out = tmp_path / "reports"

    md = (out / "compare.md").read_text().splitlines()
    rows = [line for line in md if line.startswith("|")]
    header = [c.strip() for c in rows[0].strip("|").split("|")]
    assert header[0] == "method" and header[1:] == [c.label for c in table.columns]
    cells = {r.strip("|").split("|")[0].strip(): [c.strip() for c in r.strip("|").split("|")[1:]]
             for r in rows[2:]}
    assert cells["flair"] == ["**40.00**", "**41.00**", "**42.00**", "**43.00**", "**25.00**", "70.00"]
    assert cells["clip"] == ["30.00", "31.00", "—", "—", "15.00", "**80.00**"]
    assert cells["filip"] == ["26.00", "26.00", "12.00", "30.00", "—", "—"]
    assert cells["extra"] == ["1.00", "2.00", "—", "—", "—", "—"]
    assert len(rows) == 2 + 4  # one table
    assert "* filip: fine-grained `global`, long `filip`" in md

    with (out / "compare.csv").open() as f:
        csv_rows = {r["method"]: r for r in csv.DictReader(f)}
    assert list(csv_rows) == ["flair", "clip", "filip", "extra"]
    for run, expected in EXPECTED.items():
        for key in COLUMNS:
            assert csv_rows[run][key] == (str(expected[key]) if key in expected else ""), (run, key)
    assert csv_rows["flair"]["builtin_segmentation/mode"] == "attention"

    assert json.loads((out / "compare.json").read_text()) == EXPECTED

    with (out / "train_loss.csv").open() as f:
        loss = list(csv.reader(f))
    assert loss == [["step", "flair", "clip"], ["1", "5.0", "2.0"], ["2", "4.0", "1.5"], ["3", "3.0", ""]]


def test_cli_writes_reports(eval_dir, runs_dir, tmp_path, capsys):
    assert main(["compare", str(eval_dir), "--runs", str(runs_dir), "--out", str(tmp_path / "rep")]) == 0
    out = capsys.readouterr().out
    assert "| flair | **40.00** |" in out and "wrote" in out
    assert (tmp_path / "rep" / "train_loss.csv").is_file()
    assert not list((tmp_path / "rep").glob("*.png"))  # drawing is the platform's (dvc.yaml plots)
    assert main(["compare", str(eval_dir), "--out", str(tmp_path / "rep2")]) == 0  # no --runs: no curves
    assert not (tmp_path / "rep2" / "train_loss.csv").exists()


@pytest.mark.parametrize("case, message", [
    ("missing", "does not exist"),
    ("empty", "no eval files"),
    ("garbled", "flair/builtin_long.json: unreadable eval file"),
    ("not_object", "flair/builtin_long.json: expected a JSON object"),
    ("nothing_usable", "hold no retrieval R@1"),
    ("bad_jsonl", "metrics.jsonl:2: not a JSON line"),
])
def test_bad_input_is_one_line_exit_2(tmp_path, capsys, case, message):
    root = tmp_path / "eval"
    runs = tmp_path / "runs"
    if case != "missing":
        (root / "flair").mkdir(parents=True)
    good = json.dumps(retrieval("builtin_long", {"flair": (1.0, 2.0)}))
    files = {"garbled": "{not json", "not_object": "[1, 2]", "nothing_usable": json.dumps({"seconds/x": 1.0}),
             "bad_jsonl": good}
    if case in files:
        (root / "flair" / "builtin_long.json").write_text(files[case])
    if case == "bad_jsonl":
        (runs / "flair").mkdir(parents=True)
        (runs / "flair" / "metrics.jsonl").write_text('{"step": 1, "loss/total": 1.0}\n{oops\n')
    assert main(["compare", str(root), "--runs", str(runs), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("flair compare: error: ") and message in err
    assert not (tmp_path / "out" / "compare.md").exists()  # nothing written on bad input


def test_interval_and_chance_in_markdown_csv_and_json(eval_dir, tmp_path):
    path = eval_dir / "flair" / "builtin_fine_grained.json"
    metrics = json.loads(path.read_text())
    for mode, shift in (("flair", 0.0), ("global", 5.0)):  # only the shown mode's numbers may appear
        metrics |= {f"retrieval/builtin_fine_grained/{mode}/t2i_r1_ci_low": 36.1 + shift,
                    f"retrieval/builtin_fine_grained/{mode}/t2i_r1_ci_high": 43.9 + shift,
                    f"retrieval/builtin_fine_grained/{mode}/t2i_r1_chance": 1.56 + shift,
                    f"retrieval/builtin_fine_grained/{mode}/strict_t2i_r1_chance": 9.0}
    path.write_text(json.dumps(metrics))
    table = compare.build_table(compare.load_evals(eval_dir), METHODS.values())
    assert table.value("flair", "builtin_fine_grained/t2i_r1") == 40.0  # the mode choice is unchanged
    compare.write_reports(table, tmp_path / "r")
    out = tmp_path / "r"

    md = (out / "compare.md").read_text()
    assert "| flair | **40.00** [36.10, 43.90] (chance 1.56) | **41.00** |" in md
    assert "| clip | 30.00 | 31.00 |" in md  # no interval recorded: the value alone

    with (out / "compare.csv").open() as f:
        rows = {r["method"]: r for r in csv.DictReader(f)}
    key = "builtin_fine_grained/t2i_r1"
    assert (rows["flair"][key], rows["flair"][f"{key}_ci_low"], rows["flair"][f"{key}_ci_high"],
            rows["flair"][f"{key}_chance"]) == ("40.0", "36.1", "43.9", "1.56")
    assert rows["clip"][f"{key}_ci_low"] == "" and rows["clip"]["builtin_segmentation/miou_chance"] == ""

    data = json.loads((out / "compare.json").read_text())
    assert {k: v for k, v in data["flair"].items() if k.startswith(key)} == {
        key: 40.0, f"{key}_ci_low": 36.1, f"{key}_ci_high": 43.9, f"{key}_chance": 1.56}
    assert data["clip"] == EXPECTED["clip"]


def test_cells_show_what_is_recorded():
    assert compare.format_cell(6.7, 5.9, 7.5, 0.4) == "6.70 [5.90, 7.50] (chance 0.40)"
    assert compare.format_cell(6.7, bold=True) == "**6.70**"
    assert compare.format_cell(None) == "—"
    assert (compare.format_noise(5.9, 7.5) == "[5.90, 7.50]"
            and compare.format_noise(chance=0.4) == "(chance 0.40)")
    assert compare.format_noise() == ""
    assert (compare.format_cell(20.0, 17.0, 23.0, 16.67, 21.5)
            == "20.00 [17.00, 23.00] (chance 16.67, majority 21.50)")
    metrics = {"m": 1.0, "m_ci_low": 0.5, "m_chance": 0.1}
    assert compare.noise_of(metrics, "m") == (0.5, None, 0.1, None)


def test_main_table_shows_each_run_in_the_mode_it_is_given():
    """flair_lab.main_job_table and the dashboard: MAIN_TABLE's columns, each run in its method's own mode,
    not the best."""
    flair = EVALS["flair"]["builtin_fine_grained"] | EVALS["flair"]["builtin_segmentation"] | {
        "retrieval/builtin_fine_grained/flair/t2i_r1_ci_low": 36.1,
        "retrieval/builtin_fine_grained/flair/t2i_r1_ci_high": 43.9,
        "retrieval/builtin_fine_grained/global/t2i_r1_chance": 9.0}  # another mode's: not shown
    filip = EVALS["filip"]["builtin_fine_grained"] | EVALS["filip"]["builtin_long"]
    table = compare.main_table({"run-b": filip, "run-a": flair}, {"run-b": "filip", "run-a": "flair"})
    assert table.runs == ("run-b", "run-a")  # as given: the dashboard's order (newest first)
    assert [c.label for c in table.columns] == [c.label for c in MAIN_TABLE]
    fine, long_t2i, seg = "builtin_fine_grained/t2i_r1", "builtin_long/t2i_r1", "builtin_segmentation/miou"
    assert table.value("run-b", fine) == 20.0  # its own `filip` mode, although `global` has the higher mean
    assert table.value("run-b", long_t2i) == 12.0 and table.modes[("run-b", "builtin_long")] == "filip"
    assert table.cell("run-a", fine) == "40.00 [36.10, 43.90]"
    assert table.value("run-a", seg) == 20.0  # MAIN_TABLE's segmentation column is `patch` (best: attention)
    assert table.cell("run-a", "builtin_long/t2i_r1") == "—" and table.value("run-b", seg) is None


def test_dvc_plots_read_columns_compare_writes(eval_dir, runs_dir, tmp_path):
    """Every column dvc.yaml plots from reports/compare.csv and train_loss.csv is one `flair compare` writes
    for the pipeline's methods and benchmarks."""
    pipeline = yaml.safe_load((REPO / "dvc.yaml").read_text())
    methods, evaluate = pipeline["vars"][0]["methods"], pipeline["stages"]["evaluate"]["do"]
    # eval/${item}/<benchmark>.json
    benchmarks = [Path(next(iter(metric))).stem for metric in evaluate["metrics"]]
    # each file is one the command writes
    assert all(f"--benchmark {b}" in evaluate["cmd"] for b in benchmarks)
    every = {k: v for metrics in EVALS["flair"].values() for k, v in metrics.items()}
    every |= retrieval("builtin_standard", {"global": (1.0, 2.0)})
    table = compare.build_table(dict.fromkeys(methods, every), METHODS.values())
    assert {c.benchmark for c in table.columns} == set(benchmarks)
    for run in methods:
        (runs_dir / run).mkdir(parents=True, exist_ok=True)
        (runs_dir / run / "metrics.jsonl").write_text('{"step": 1, "loss/total": 1.0}\n')
    compare.write_reports(table, tmp_path / "reports", compare.load_loss_curves(runs_dir, list(table.runs)))
    headers = {f"reports/{name}": next(csv.reader((tmp_path / "reports" / name).open()))
               for name in ("compare.csv", "train_loss.csv")}
    plotted = 0
    for plot in pipeline["plots"]:
        [(name, spec)] = plot.items()
        for axis in ("x", "y"):
            for path, fields in spec[axis].items():
                for field in [fields] if isinstance(fields, str) else fields:
                    assert field in headers[path], (name, path, field)
                    plotted += 1
    assert plotted > len(table.columns)
