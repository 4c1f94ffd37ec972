"""Every dashboard page through Streamlit's AppTest against a seeded MLflow store (SQLite, file artifacts) and
a seeded Optuna study: the right numbers appear, empty states and a down service show one line, no
traceback."""

from pathlib import Path

import pandas as pd
import pytest
from streamlit.testing.v1 import AppTest

from tests.helpers import dashboard_seed as seed
from tests.helpers.dashboard_seed import FINE, LEVEL, MODE, SEEDED, TOP1, seed_platform
from tests.helpers.hostile_images import hostile, png
from tests.helpers.paths import REPO

PAGES = REPO / "dashboard" / "pages"


@pytest.fixture(scope="module")
def seeded(tmp_path_factory, tiny_data):
    return seed_platform(tmp_path_factory.mktemp("dashboard"), tiny_data)


@pytest.fixture
def env(seeded, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", seeded["uri"])
    monkeypatch.setenv("FLAIR_SWEEP_STORAGE", seeded["storage"])
    monkeypatch.setenv("FLAIR_DATA_ROOT", str(seeded["data"]))
    monkeypatch.setenv("FLAIR_RUNS_ROOT", str(seeded["runs_root"]))
    return seeded


def run(page: str) -> AppTest:
    app = AppTest.from_file(str(PAGES / f"{page}.py"), default_timeout=120)
    app.run()
    assert not app.exception, [e.value for e in app.exception]
    return app


def texts(app: AppTest) -> str:
    parts = [e.value for kind in ("title", "subheader", "markdown", "caption", "info", "warning")
             for e in app.get(kind)]
    return "\n".join(str(p) for p in parts)


def frame(element) -> pd.DataFrame:
    return element.value if isinstance(element.value, pd.DataFrame) else element.value.data


def vega(element) -> tuple[dict, dict[str, pd.DataFrame]]:
    """A chart element's Vega-Lite spec and its datasets (Streamlit sends them apart, as Arrow)."""
    import json

    from streamlit import dataframe_util

    datasets = {d.name: dataframe_util.convert_arrow_bytes_to_pandas_df(d.data.data)
                for d in element.proto.datasets}
    return json.loads(element.proto.spec), datasets


def plotly(app: AppTest) -> dict[str, dict]:
    """The page's plotly figures (as sent to the browser) by their title: Optuna titles each of its plots."""
    import json

    figures = [json.loads(e.proto.spec) for e in app.get("plotly_chart")]
    return {f["layout"]["title"]["text"]: f for f in figures}


def test_compare_shows_every_method_and_paired_deltas_against_the_chosen_baseline(env):
    app = run("compare")
    key = frame(app.dataframe[0]).set_index("method")
    assert set(key.index) == set(SEEDED)
    assert key.loc["flair", "fine-grained t2i R@1"] == 12.5 and key.loc["clip", "long t2i R@1"] == 35.0
    # Paired on the same 200 queries (the seeded records): FLAIR finds 5 more than CLIP, in 5 of 50 clusters.
    flair_delta = key.loc["flair", "Δ fine-grained t2i R@1"]
    assert flair_delta.startswith("+2.50 [+") and " p 0.0" in flair_delta, flair_delta  # against CLIP
    assert key.loc["clip", "Δ fine-grained t2i R@1"] == "reference"
    assert key.loc["filip", "Δ fine-grained t2i R@1"] == "not paired (no per-query records)"
    assert key.loc["flair", "Δ long t2i R@1"] == "not paired (no per-query records)"  # none kept for it
    noise = "fine-grained t2i R@1 95 % CI · chance"
    assert key.loc["flair", noise] == "[10.94, 14.06] (chance 1.56)"  # as in every table (format_noise)
    assert key.loc["clip", noise] == ""  # logged before intervals existed
    app.selectbox[0].select("dreamlip").run()  # the baseline selector is the only selectbox
    key = frame(app.dataframe[0]).set_index("method")
    assert key.loc["flair", "Δ fine-grained t2i R@1"].startswith("+3.50 [")
    assert key.loc["clip", "Δ fine-grained t2i R@1"].startswith("+1.00 [")
    assert "deltas against dreamlip" in texts(app)
    full = frame(app.dataframe[1])
    assert full.loc[FINE.format(mode="filip")].dropna().tolist() == [11.0]
    assert len(app.get("vega_lite_chart")) == 1  # the side-by-side chart


def test_uncertainty_frame_carries_each_values_interval_and_reference_levels():
    from dashboard import data
    from flair_core.evaluation.comparison import Column, Table

    column = Column("builtin_classification/top1", "classification", "builtin_classification", "top1", "cls")
    values = {}
    for run, (value, low, high) in {"above": (30.0, 26.0, 34.0), "holds": (21.0, 17.0, 25.0),
                                    "edge": (22.0, 20.0, 24.0), "below": (5.0, 2.0, 8.0)}.items():
        values |= {(run, column.key + suffix): x for suffix, x in
                   zip(("", "_ci_low", "_ci_high", "_chance", "_majority"), (value, low, high, 20.0, 24.0),
                       strict=True)}
    values[("old", column.key)] = 40.0  # logged before intervals: no low, high or levels
    table = Table(("above", "holds", "edge", "below", "old", "none"), (column,), values, {})
    out = data.uncertainty_frame(table, {r: f"m-{r}" for r in table.runs}).set_index("method")
    assert list(out.index) == ["m-above", "m-holds", "m-edge", "m-below", "m-old"]  # "none" logged nothing
    assert out.loc["m-holds", ["value", "low", "high", "chance", "majority"]].tolist() == [21, 17, 25, 20, 24]
    assert out["at_chance"].to_dict() == {"m-above": False, "m-holds": True, "m-edge": True,
                                          "m-below": False, "m-old": False}  # below chance: not "at" it
    assert out["reading"].to_dict() == {"m-above": data.EXCLUDES_CHANCE, "m-holds": data.HOLDS_CHANCE,
                                        "m-edge": data.HOLDS_CHANCE, "m-below": data.EXCLUDES_CHANCE,
                                        "m-old": data.NO_INTERVAL}
    assert out.loc["m-old", ["low", "high", "chance", "majority"]].isna().all()


def test_side_by_side_chart_has_error_bars_chance_ticks_and_greys_what_holds_chance(env):
    app = run("compare")
    spec, datasets = vega(app.get("vega_lite_chart")[0])
    layers = {layer["mark"]["type"]: layer for layer in spec["layer"]}
    assert set(layers) == {"bar", "rule", "tick"}
    bars, rules, ticks = layers["bar"], layers["rule"], layers["tick"]
    assert (bars["encoding"]["x"]["field"], bars["encoding"]["yOffset"]["field"]) == ("value", "method")
    assert bars["encoding"]["color"]["condition"]["test"] == "datum.at_chance"  # grey where it holds chance
    assert bars["encoding"]["opacity"]["field"] == "reading"  # and faded, with a legend saying so
    assert (rules["encoding"]["x"]["field"], rules["encoding"]["x2"]["field"]) == ("low", "high")
    assert rules["data"]["name"] == bars["data"]["name"]  # each bar's own interval
    assert ticks["encoding"]["x"]["field"] == "at"
    values = datasets[bars["data"]["name"]].set_index(["method", "metric"])
    flair = values.loc[("flair", "fine-grained t2i R@1")]
    assert (flair["value"], flair["low"], flair["high"], flair["chance"]) == (12.5, 10.94, 14.06, 1.56)
    assert not flair["at_chance"]
    top1 = values.xs("cls top-1", level="metric")
    assert top1["at_chance"].to_dict() == {"clip": False, "flair": True}  # FLAIR's interval holds chance
    assert top1.loc["flair", ["value", "low", "high", "chance", "majority"]].tolist() == list(TOP1["flair"])
    assert values.loc[("dreamlip", "long t2i R@1"), "reading"] == "no interval"
    levels = datasets[ticks["data"]["name"]]
    assert sorted(map(tuple, levels[["metric", "level", "at"]].values.tolist())) == [
        ("cls top-1", "chance", 20.0), ("cls top-1", "majority class", 24.0),
        ("fine-grained t2i R@1", "chance", 1.56)]
    caption = next(c.value for c in app.caption if c.value.startswith("Each bar:"))
    assert "95 % bootstrap interval" in caption and "holds chance is grey and faded" in caption


def test_paired_deltas_hold_only_after_holm_over_the_pages_comparisons(env):
    from dashboard import data

    run_ids, fine = env["run_ids"], FINE.format(mode="flair")
    pairs = {method: ((run_ids[method], FINE.format(mode=MODE[method])), (run_ids["clip"], FINE.format(
        mode="global"))) for method in ("flair", "dreamlip", "filip")}
    deltas = data.paired_deltas(env["uri"], pairs)
    raw = {m: data.paired_delta(env["uri"], *pairs[m])["p"] for m in ("flair", "dreamlip")}
    assert deltas["filip"] is None  # its run kept no records
    assert deltas["flair"]["value"] == pytest.approx(2.5)
    assert deltas["dreamlip"]["value"] == pytest.approx(-1.0)
    low, high = sorted(raw.values())
    assert sorted(d["p"] for d in (deltas["flair"], deltas["dreamlip"])) == pytest.approx([2 * low, high])
    assert deltas["flair"]["holds"] and not deltas["dreamlip"]["holds"]
    assert deltas["flair"]["low"] > 0 > deltas["dreamlip"]["low"]
    from mlflow import MlflowClient

    from flair_lab.tracking import paired_between

    with pytest.raises(ValueError, match="different benchmarks"):  # a caller's mistake, not "no records"
        paired_between(MlflowClient(env["uri"]), (run_ids["flair"], fine),
                       (run_ids["clip"], fine.replace("fine_grained", "long")))


def test_fact_type_table_gives_each_run_its_cells_greys_chance_and_says_not_measured(env):
    from dashboard import data

    runs = data.runs(env["uri"]).set_index("method", drop=False)
    cells, styles = data.fact_type_table(runs)
    cells.index, styles.index = runs.index, runs.index  # rows labelled "method · run"
    assert list(cells.columns) == list(data.fact_type_columns())
    assert cells.loc["flair", "R@1 object"] == "20.00 [15.00, 25.00] · chance 1.56"
    assert styles.loc["flair", "R@1 object"].startswith("background-color: rgba(10, 125, 50,")
    assert styles.loc["flair", "pairs colour"] != styles.loc["flair", "R@1 object"]  # further above chance
    for column in ("R@1 relation", "pairs shape"):  # intervals holding chance
        assert styles.loc["flair", column] == data.GREY, column
    assert cells.loc["flair", "pairs size"] == data.NOT_MEASURED  # a change this run did not log
    assert cells.loc["clip", "pairs, all"] == "55.00 [51.00, 59.00] · chance 50.00"  # CLIP in global mode
    assert (cells.loc["filip"] == data.NOT_MEASURED).all()  # logged before diagnostics


def test_compare_shows_the_fact_type_heat_map(env):
    app = run("compare")
    assert "What each model has learned, by fact type" in texts(app)
    facts = frame(app.dataframe[2])
    assert facts.loc["flair · flair-seeded", "pairs colour"] == "80.00 [70.00, 90.00] · chance 50.00"
    assert facts.loc["dreamlip · dreamlip-seeded", "R@1 merged"] == "not measured"


def test_compare_filters_by_preset(env):
    app = run("compare")
    app.multiselect[0].set_value([]).run()
    assert "No run matches these filters." in texts(app)


def test_compare_shows_and_filters_by_data_level(env):
    app = run("compare")
    key = frame(app.dataframe[0]).set_index("method")
    assert key["level"].to_dict() == LEVEL
    levels = app.multiselect[1]  # Preset, Data level, Data version
    assert levels.label == "Data level" and levels.options == ["easy", "hard"]
    levels.set_value(["easy"]).run()
    assert frame(app.dataframe[0])["method"].tolist() == ["flair"]
    app.multiselect[1].set_value(["hard"]).run()
    assert sorted(frame(app.dataframe[0])["method"]) == ["clip", "dreamlip", "filip"]


def test_paper_page_shows_the_published_numbers_with_their_source_and_our_scale(env):
    app = run("paper")
    published = frame(app.dataframe[0])
    cc3m = published[published["data"] == "CC3M-recap"].iloc[0]
    assert (cc3m["coco_t2i_r1"], cc3m["coco_i2t_r1"], cc3m["flickr_t2i_r1"]) == (37.7, 51.6, 65.7)
    text = texts(app)
    assert "arxiv.org/abs/2412.03561" in text and "Not comparable number for number" in text
    ours = frame(app.dataframe[-1]).set_index("method")  # our runs come after every published table
    assert ours.loc["flair", "fine-grained t2i R@1"] == 12.5 and ours.loc["flair", "model"] == "micro-32"
    assert "not recovered from any source" in text  # tables no source gave are said to be missing


def test_paper_page_marks_secondary_tables_as_secondary(env):
    app = run("paper")
    shown = [e for e in app.main if e.type in ("subheader", "markdown", "caption", "dataframe")]
    heading = next(i for i, e in enumerate(shown) if e.type == "subheader"
                   and "loss-component ablation" in e.value)
    assert shown[heading].value.startswith("[S] ")
    section = shown[heading + 1:next(i for i in range(heading + 1, len(shown))
                                     if shown[i].type == "subheader")]
    badge = [e.value.replace("\\", "") for e in section if e.type == "markdown"]
    assert len(badge) == 1 and "[S] secondary — third-party notes of the paper" in badge[0], badge
    assert any("../shared/reference/paper_numbers.md §3" in e.value for e in section if e.type == "caption")
    ablation = frame(next(e for e in section if e.type == "dataframe")).set_index("method")
    assert ablation.loc["text-conditioned loss only (TCS)", "voc20_miou"] == 36.9
    # missing, not guessed
    assert pd.isna(ablation.loc["global + multi-caption (MPS, no TCS)", "coco_i2t_r1"])
    primary = next(e for e in app.subheader if "COCO / Flickr30k retrieval R@1 of the released" in e.value)
    assert primary.value.startswith("[P] ")  # the primary table beside it keeps its own mark


def test_every_published_table_declares_its_provenance_and_source():
    import yaml

    text = (REPO / "flair_lab" / "paper_numbers.yaml").read_text()
    assert "/work/" not in text  # cited by repo-relative name, never a machine path
    tables = yaml.safe_load(text)["tables"]
    assert {t["provenance"] for t in tables} == {"primary", "secondary"}
    for table in tables:
        assert table["provenance"] in ("primary", "secondary"), table["id"]
        assert table["source_section"].startswith("../shared/reference/paper_numbers.md §"), table["id"]
        assert all(set(r["values"]) <= set(table["columns"]) for r in table["rows"]), table["id"]


def test_a_table_without_provenance_is_one_warning(env, monkeypatch, tmp_path):
    import yaml

    published = yaml.safe_load((REPO / "flair_lab" / "paper_numbers.yaml").read_text())
    del published["tables"][1]["provenance"]
    (tmp_path / "paper.yaml").write_text(yaml.safe_dump(published, allow_unicode=True))
    monkeypatch.setenv("FLAIR_PAPER_NUMBERS", str(tmp_path / "paper.yaml"))
    app = run("paper")
    assert [w.value for w in app.warning] == [
        "table main_comparison in paper.yaml has provenance None, not primary or secondary"]


def test_sweeps_page_shows_best_trial_states_and_optunas_own_plots(env):
    app = run("sweeps")
    assert [m.value for m in app.metric] == ["7", "1", "1", "0"]  # complete, pruned, fail, running
    best = frame(app.dataframe[0])
    assert best.iloc[0]["trial"] == 6 and best.iloc[0]["sampling.k"] == 7
    assert best.iloc[0][FINE.format(mode="flair")] == pytest.approx(10.5)
    assert not app.get("vega_lite_chart") and not app.info
    plots = plotly(app)
    assert list(plots) == ["Optimization History Plot", "Hyperparameter Importances",
                           "Parallel Coordinate Plot", "Slice Plot", "Timeline Plot"]  # no Pareto front
    history = plots["Optimization History Plot"]
    assert [1.5 * k for k in range(1, 8)] == history["data"][0]["y"]  # the completed trials' objective
    assert history["layout"]["yaxis"]["title"]["text"] == FINE.format(mode="flair")
    importances = plots["Hyperparameter Importances"]["data"][0]
    assert sorted(importances["y"]) == ["method.settings.tcs_weight", "sampling.k"]
    assert sum(importances["x"]) == pytest.approx(1.0)  # fANOVA's normalised importances
    sliced = plots["Slice Plot"]["layout"]
    assert {sliced["xaxis"]["title"]["text"], sliced["xaxis2"]["title"]["text"]} == {
        "sampling.k", "method.settings.tcs_weight"}
    timeline = {bar["name"] for bar in plots["Timeline Plot"]["data"]}
    assert timeline == {"COMPLETE", "PRUNED", "FAIL"}  # every trial, not only the completed ones
    trials = frame(app.dataframe[-1])
    assert sorted(trials["state"]) == ["COMPLETE"] * 7 + ["FAIL", "PRUNED"]


@pytest.fixture(scope="module")
def sweeps(tmp_path_factory):
    """Studies Optuna's plots cannot all be drawn for, and one with two objectives."""
    import optuna

    storage = f"sqlite:///{tmp_path_factory.mktemp('sweeps') / 'optuna.db'}"
    space = {"sampling.k": optuna.distributions.IntDistribution(1, 10),
             "method.settings.tcs_weight": optuna.distributions.FloatDistribution(0, 1)}

    def trial(k, **values):
        return optuna.trial.create_trial(params={"sampling.k": k, "method.settings.tcs_weight": k / 10},
                                         distributions=space, **values)

    pareto = optuna.create_study(study_name="pareto", storage=storage, directions=["maximize", "minimize"])
    pareto.set_user_attr("signature", {"objectives": [{"metric": "r1", "direction": "maximize"},
                                                      {"metric": "seconds", "direction": "minimize"}]})
    for k in range(1, 7):
        pareto.add_trial(trial(k, values=[k * 1.0, (k % 3) * 10.0 + k]))
    pareto.add_trial(trial(2, state=optuna.trial.TrialState.RUNNING))
    for name, complete in (("none", 0), ("one", 1), ("three", 3)):
        study = optuna.create_study(study_name=name, storage=storage, direction="maximize")
        for k in range(1, complete + 1):
            study.add_trial(trial(k, value=k * 1.0))
        study.add_trial(optuna.trial.create_trial(state=optuna.trial.TrialState.FAIL))
    flat = optuna.create_study(study_name="same-score", storage=storage, direction="maximize")
    for k in range(1, 6):
        flat.add_trial(trial(k, value=1.0))
    flat.add_trial(optuna.trial.create_trial(state=optuna.trial.TrialState.FAIL))
    return storage


def sweep_page(storage: str, study: str, monkeypatch) -> AppTest:
    monkeypatch.setenv("FLAIR_SWEEP_STORAGE", storage)
    app = run("sweeps")
    app.selectbox[0].select(study).run()
    assert not app.exception, [e.value for e in app.exception]
    return app


@pytest.mark.parametrize(("study", "info", "titles"), [
    ("none", "No trial has completed yet: the best trial and Optuna's plots appear once 2 have.", []),
    ("one", "Optuna's plots need at least 2 completed trials; 1 so far.", []),
    ("three", "fANOVA importances need at least 4 completed trials; 3 so far.",
     ["Optimization History Plot", "Parallel Coordinate Plot", "Slice Plot"]),
    ("same-score", ("fANOVA importances cannot be computed from these trials: Encountered zero total "
                    "variance in all trees."), ["Optimization History Plot", "Parallel Coordinate Plot",
                                                 "Slice Plot"]),
], ids=["none-complete", "one-complete", "three-complete", "same-score"])
def test_a_study_too_small_for_a_plot_gets_one_info_line_instead(sweeps, monkeypatch, study, info, titles):
    app = sweep_page(sweeps, study, monkeypatch)
    assert [e.value for e in app.info] == [info]
    assert list(plotly(app)) == [*titles, "Timeline Plot"]  # the timeline shows the failed trial
    assert frame(app.dataframe[-1])["state"].iloc[-1] == "FAIL"


def test_a_two_objective_study_shows_optunas_pareto_front_and_plots_the_chosen_objective(sweeps, monkeypatch):
    app = sweep_page(sweeps, "pareto", monkeypatch)
    assert [m.value for m in app.metric] == ["6", "0", "0", "1"]
    plots = plotly(app)
    assert "Pareto-front Plot" in plots and "Hyperparameter Importances" in plots and not app.info
    pareto = plots["Pareto-front Plot"]["layout"]
    assert (pareto["xaxis"]["title"]["text"], pareto["yaxis"]["title"]["text"]) == ("r1", "seconds")
    front = frame(app.dataframe[0])  # the table beside Optuna's plot
    assert sorted(front["trial"]) == [2, 5]  # (3, 3) and (6, 6); (6, 6) dominates (4, 14) and (5, 25)
    assert plots["Optimization History Plot"]["data"][0]["y"] == [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]
    app.selectbox[1].select("seconds").run()  # the objective selector
    assert "Optimization history of seconds" in texts(app)
    assert plotly(app)["Optimization History Plot"]["data"][0]["y"] == [11.0, 22.0, 3.0, 14.0, 25.0, 6.0]


def test_registry_page_shows_aliases_decisions_and_lineage(env):
    app = run("registry")
    assert [s.value for s in app.subheader] == ["flair-lab-clip", "flair-lab-flair"]
    assert [(m.label, m.value) for m in app.metric] == [("champion", "v1"), ("challenger", "—"),
                                                        ("champion", "v1"), ("challenger", "v2")]
    text = texts(app)
    fine = FINE.format(mode="flair")
    assert f"champion: first version: {fine} = 12.50 [10.94, 14.06]" in text
    assert (f"challenger: {fine} gain +0.50 over 12.50 is within the interval [11.20, 14.80] (the champion "
            "kept no per-query records: not paired): stays challenger") in text
    versions = frame(app.dataframe[1])  # flair-lab-flair's
    assert versions["git_commit"].tolist() == ["c0ffee2", "c0ffee1"]
    assert versions["data_level"].tolist() == ["easy", "easy"]
    assert versions["link"].str.contains(env["run_ids"]["flair"]).all()


def test_inspect_page_shows_the_attention_map_and_the_rank_the_library_computes(env):
    from dashboard import data

    app = run("inspect")
    assert len(app.get("image")) == 2  # the picked image under the caption's attention, the top k
    caption = app.text_input[0].value
    key = app.selectbox[1].value
    expected = data.caption_ranks(env["uri"], "flair-lab-flair", 2, env["data"], 512, caption)
    rank = int(expected.loc[expected["image"] == key, "rank"].iloc[0])
    assert app.metric[0].value == f"{rank} / 64"
    app.text_input[0].set_value("a large red circle in the centre").run()
    assert not app.exception
    changed = data.caption_ranks(env["uri"], "flair-lab-flair", 2, env["data"], 512,
                                 "a large red circle in the centre")
    assert app.metric[0].value == f"{int(changed.loc[changed['image'] == key, 'rank'].iloc[0])} / 64"


@pytest.mark.parametrize("kind", list(hostile()))
def test_a_hostile_upload_is_one_warning_and_the_page_keeps_the_built_in_image(env, kind):
    from dashboard import data

    app = run("inspect")
    caption, key = app.text_input[0].value, app.selectbox[1].value
    app.file_uploader[0].set_value((f"{kind}.png", hostile()[kind], "image/png")).run()
    assert not app.exception, [e.value for e in app.exception]
    warnings = [w.value for w in app.warning]
    assert len(warnings) == 1 and "\n" not in warnings[0], warnings
    assert (warnings[0].startswith(f"upload '{kind}.png': ")
            and warnings[0].endswith(f"showing the built-in test image {key} instead"))
    expected = data.caption_ranks(env["uri"], "flair-lab-flair", 2, env["data"], 512, caption)
    assert app.metric[0].label == f"rank of {key} for the caption"
    assert app.metric[0].value == f"{int(expected.loc[expected['image'] == key, 'rank'].iloc[0])} / 64"
    assert len(app.get("image")) == 2


def test_a_valid_upload_is_ranked_among_the_built_in_images(env):
    from dashboard import data

    raw = png()
    app = run("inspect")
    caption = app.text_input[0].value
    app.file_uploader[0].set_value(("mine.png", raw, "image/png")).run()
    assert not app.exception and not app.warning, ([e.value for e in app.exception]
                                                    + [w.value for w in app.warning])
    expected = data.caption_ranks(env["uri"], "flair-lab-flair", 2, env["data"], 512, caption,
                                  data.image(raw, "x"))
    assert app.metric[0].label == "rank of upload for the caption"
    assert app.metric[0].value == f"{int(expected.loc[expected['image'] == 'upload', 'rank'].iloc[0])} / 65"


FLAIR_V2, CLIP_V1 = "flair-lab-flair v2 (challenger)", "flair-lab-clip v1 (champion)"  # Inspect's labels


def thumbnails(app: AppTest) -> list[list[str]]:
    """The captions of each model column's top-k thumbnails ("#rank mark key · score"), left to right."""
    return [e.captions for e in app.get("image") if e.captions and e.captions[0].startswith("#")]


def expected_thumbnails(env, name: str, version: int, caption: str, truth: set[str], k: int = 5) -> list[str]:
    from dashboard import data

    top = data.caption_ranks(env["uri"], name, version, env["data"], 512, caption).head(k)
    return [f"#{r} {'✓' if key in truth else '✗'} {key} · {score:.3f}"
            for key, r, score in zip(top["image"], top["rank"], top["score"], strict=True)]


def test_inspect_shows_the_top_k_images_with_rank_mark_and_score(env):
    """A free-typed caption: only the picked image is true. It is picked as the model's first choice for the
    caption, so the marks read ✓ then ✗ × 4."""
    from dashboard import data

    caption = "something small and green near the top"
    first = data.caption_ranks(env["uri"], "flair-lab-flair", 2, env["data"], 512, caption)["image"].iloc[0]
    app = run("inspect")
    app.selectbox(key="image").select(first).run()
    app.text_input[0].set_value(caption).run()
    assert not app.exception
    shown = thumbnails(app)
    assert shown == [expected_thumbnails(env, "flair-lab-flair", 2, caption, {first})]
    assert [c.split()[1] for c in shown[0]] == ["✓", "✗", "✗", "✗", "✗"]
    app.number_input(key="k").set_value(8).run()
    assert len(thumbnails(app)[0]) == 8
    assert "the caption's attention over each" in texts(app)  # FLAIR: overlays, not plain images


def test_inspect_marks_every_image_a_built_in_querys_facts_hold_for(env):
    from dashboard import data

    fine = data.builtin_queries(env["data"])
    query = next(q for q, p in enumerate(fine["positives"]) if len(p) > 1)  # a text true of several images
    truth = set(fine["positives"][query])
    assert data.true_images(env["data"], fine["texts"][query]) >= truth
    assert data.true_images(env["data"], "no such caption") == frozenset()
    app = run("inspect")
    app.text_input[0].set_value(fine["texts"][query]).run()
    key = app.selectbox(key="image").value
    truth = {key} | data.true_images(env["data"], fine["texts"][query])
    assert thumbnails(app) == [expected_thumbnails(env, "flair-lab-flair", 2, fine["texts"][query], truth)]


def test_a_second_model_is_ranked_beside_the_first_on_the_same_caption(env):
    from dashboard import data

    app = run("inspect")
    assert app.selectbox(key="model").value == FLAIR_V2  # the method under study first, then the baselines
    assert app.selectbox(key="beside").value == "none" and CLIP_V1 in app.selectbox(key="beside").options
    app.selectbox(key="beside").select(CLIP_V1).run()
    assert not app.exception, [e.value for e in app.exception]
    caption, key = app.text_input[0].value, app.selectbox(key="image").value
    assert [s.value for s in app.subheader][-2:] == [FLAIR_V2, CLIP_V1]
    truth = {key} | data.true_images(env["data"], caption)
    assert thumbnails(app) == [expected_thumbnails(env, "flair-lab-flair", 2, caption, truth),
                               expected_thumbnails(env, "flair-lab-clip", 1, caption, truth)]
    ranks = [m for m in app.metric if m.label == f"rank of {key} for the caption"]
    assert len(ranks) == 2 and all(m.value.endswith(" / 64") for m in ranks)
    images = [e.captions[0] for e in app.get("image") if len(e.captions) == 1]
    assert images[0].startswith(f"attention of the caption over {key}")
    assert images[1] == f"{key}: clip has no text-conditioned attention"


def test_disagreements_are_the_queries_one_model_finds_first_and_the_other_does_not():
    import numpy as np

    from dashboard import data

    # query: 0 1 2 3 4 5 — a's records listed out of order; 0-based ranks of each query's best true image
    a = {"t2i/query": np.array([3, 0, 5, 1, 2, 4]), "flair/t2i/rank": np.array([0, 0, 0, 5, 0, 2]),
         "t2i/cluster": np.zeros(6)}
    b = {"t2i/query": np.arange(6), "global/t2i/rank": np.array([1, 0, 0, 0, 3, 4])}
    found = data.disagreements(a, "flair", b, "global")
    assert found.values.tolist() == [[0, "a", 1, 2], [5, "a", 1, 5], [1, "b", 6, 1]]
    assert found["first"].value_counts().to_dict() == {"a": 2, "b": 1}
    assert data.disagreements(a, "flair", a, "flair").empty  # a model never disagrees with itself
    with pytest.raises(ValueError, match="not scored on the same queries"):
        data.disagreements(a, "flair", {"t2i/query": np.arange(5), "global/t2i/rank": np.zeros(5)}, "global")
    with pytest.raises(ValueError, match="model b's records have no 'filip/t2i/rank'"):
        data.disagreements(a, "flair", b, "filip")


def test_inspect_lists_the_two_models_disagreements_with_their_queries(env):
    from dashboard import data

    app = run("inspect")
    app.selectbox(key="beside").select(CLIP_V1).run()
    counts = {m.label: m.value for m in app.metric if m.label.startswith("at rank 1 only for")}
    # The seeded records: FLAIR finds the first query of clusters 0-24 first, CLIP those of clusters 0-19.
    assert counts == {f"at rank 1 only for {FLAIR_V2}": "5", f"at rank 1 only for {CLIP_V1}": "0"}
    listed = frame(next(d for d in app.dataframe if d.key and d.key.startswith("disagreement")))
    fine = data.builtin_queries(env["data"])
    assert listed["query #"].tolist() == [80, 84, 88, 92, 96]
    assert listed["query"].tolist() == [fine["texts"][q] for q in (80, 84, 88, 92, 96)]
    assert set(listed["at rank 1 only for"]) == {FLAIR_V2}
    assert listed[f"rank · {CLIP_V1}"].tolist() == [8] * 5  # the seeded records' rank 7, 1-based
    assert f"**{FLAIR_V2}** finds 5 at rank 1 that **{CLIP_V1}** does not" in texts(app)
    app.selectbox(key="beside").select("flair-lab-flair v1 (champion)").run()  # the same run: no disagreement
    assert {m.value for m in app.metric if m.label.startswith("at rank 1 only for")} == {"0"}


def test_selecting_a_disagreement_opens_its_query_in_both_columns(env):
    from dashboard import data

    app = run("inspect")
    app.selectbox(key="beside").select(CLIP_V1).run()
    listed = next(d for d in app.dataframe if d.key and d.key.startswith("disagreement"))
    app.session_state[listed.key] = {"selection": {"rows": [1], "columns": []}}  # a click on the 2nd row
    app.run()
    assert not app.exception, [e.value for e in app.exception]
    fine = data.builtin_queries(env["data"])
    caption, source = fine["texts"][84], fine["source"][84]
    assert app.text_input[0].value == caption and app.selectbox(key="image").value == source
    truth = {source} | set(fine["positives"][84])
    assert thumbnails(app) == [expected_thumbnails(env, "flair-lab-flair", 2, caption, truth),
                               expected_thumbnails(env, "flair-lab-clip", 1, caption, truth)]
    app.text_input[0].set_value("a blue square").run()  # the opened query stays editable
    assert app.text_input[0].value == "a blue square" and app.selectbox(key="image").value == source


def test_progress_gives_the_step_rate_and_time_left_from_the_steps_written():
    from dashboard import live

    steps = pd.DataFrame({"step": [3, 1, 2, 4], "samples_per_s": [10.0, 30.0, 20.0, 40.0],
                          "seconds": [2.0, 1.0, 1.0, 2.0]})
    assert live.progress(steps, 10, window=2) == {"step": 4, "total": 10, "samples_per_s": 25.0,
                                                  "seconds_per_step": 2.0, "eta_seconds": 12.0}
    assert live.progress(steps, 4)["eta_seconds"] == 0.0  # at its last step
    assert live.progress(steps, None)["eta_seconds"] is None  # the last step is not known
    assert live.progress(steps[["step"]], 10)["eta_seconds"] is None  # no time per step logged
    assert live.progress(pd.DataFrame(), 10)["step"] == 0
    assert live.total_steps({"epochs": "2", "steps_per_epoch": "10"}) == 20
    # no steps per epoch: samples per epoch (set, else the data's size) // (batch × ranks), as the loop does
    assert live.total_steps({"epochs": 3, "steps_per_epoch": None, "batch_size": 8}, 512, ranks=2) == 96
    assert live.total_steps({"epochs": "1", "steps_per_epoch": "None", "samples_per_epoch": "100",
                             "batch_size": "10"}) == 10
    assert live.total_steps({"epochs": "1", "steps_per_epoch": "None", "batch_size": "8"}) is None
    assert [live.duration(x) for x in (None, 42, 185, 3720)] == ["—", "42 s", "3 min 05 s", "1 h 02 min"]


def test_runs_page_follows_the_training_in_progress_with_its_step_eta_and_curves(env, monkeypatch):
    import os

    monkeypatch.setenv("PREFECT_API_URL", "http://127.0.0.1:4200/api")
    monkeypatch.delenv("PREFECT_UI_URL", raising=False)
    training, done = f"flows/flair-{seed.LIVE['run_key'][:12]}", f"flows/clip-{seed.DONE['run_key'][:12]}"
    live = env["runs_root"] / training / "metrics.jsonl"
    os.utime(live)  # a step just written
    app = run("runs")
    assert [s.value for s in app.subheader] == ["Training on this machine", "In MLflow"]
    folders = frame(app.dataframe[0]).set_index("folder")
    assert folders["state"].to_dict() == {training: "training", done: "finished", "study/0123abcd": "stopped"}
    assert folders.loc[training, ["step", "total", "ETA"]].tolist() == [12, 20, "4 s"]
    assert folders.loc[done, "ETA"] == folders.loc["study/0123abcd", "ETA"] == ""  # not training: no ETA
    assert folders.loc[done, "prefect"] == (
        f"http://127.0.0.1:4200/runs/flow-run/{seed.DONE['flow_run']}")  # the flow run that evaluated it
    standing = {m.label: m.value for m in app.metric[:3]}  # the training followed by default
    assert standing == {"step": "12 / 20", "samples/s": "16.0", "ETA": "4 s"}
    charts = app.get("vega_lite_chart")
    loss, validation = (vega(c) for c in charts[:2])
    losses = next(iter(loss[1].values()))
    assert sorted(losses["metric"].unique()) == ["loss/contrastive", "loss/total"]
    total = losses[losses["metric"] == "loss/total"]
    assert total["step"].tolist() == list(range(1, 13)) and total["value"].tolist() == [
        pytest.approx(seed.loss_at(s)) for s in range(1, 13)]
    validated = next(iter(validation[1].values()))
    assert validated[["metric", "step", "value"]].values.tolist() == [[seed.VALIDATION, 5, 2.0],
                                                                      [seed.VALIDATION, 10, 4.0]]

    runs = frame(app.dataframe[1]).set_index("run")
    assert runs["status"].to_dict() == {"flair-live": "RUNNING", "clip-done": "FINISHED"}  # running first
    assert runs.loc["flair-live", ["step", "total", "ETA"]].tolist() == [12, 20, "4 s"]
    assert runs.loc["clip-done", "ETA"] == "" and runs.loc["clip-done", "step"] == 20
    assert runs.loc["clip-done", "prefect"].endswith(seed.DONE["flow_run"])  # its folder, by its run_key tag
    assert {m.label: m.value for m in app.metric[3:6]} == standing  # the RUNNING run followed by default
    mlflow_loss, mlflow_validation = (next(iter(vega(c)[1].values())) for c in charts[2:4])
    assert mlflow_loss["step"].tolist() == list(range(1, 13))
    assert mlflow_validation[["step", "value"]].values.tolist() == [[5, 2.0], [10, 4.0]]

    os.utime(live, (0, 0))  # quiet for long: stopped (the page reads the folder again after its TTL)
    from dashboard.live import run_folders

    run_folders.clear()
    app.run()
    assert frame(app.dataframe[0]).set_index("folder").loc[training, "state"] == "stopped"


def test_runs_page_refreshes_in_a_fragment():
    """Each section is an `st.fragment(run_every=...)`: it reruns in place, the rest of the page stays."""
    import ast

    tree = ast.parse((PAGES / "runs.py").read_text())
    decorated = {f.name: ast.unparse(f.decorator_list[0]) for f in tree.body
                 if isinstance(f, ast.FunctionDef) and f.decorator_list}
    assert decorated == {"run_folders": "st.fragment(run_every=REFRESH)",
                         "mlflow_runs": "st.fragment(run_every=REFRESH)"}


def test_runs_page_with_no_run_folder_says_what_appears_there(env, monkeypatch, tmp_path):
    monkeypatch.setenv("FLAIR_RUNS_ROOT", str(tmp_path))
    app = run("runs")
    assert app.info[0].value.startswith(f"No run folder under {tmp_path}")
    assert frame(app.dataframe[0])["run"].tolist() == ["flair-live", "clip-done"]  # MLflow still shown


def test_the_router_serves_the_runs_page(env):
    app = AppTest.from_file(str(REPO / "dashboard" / "app.py"), default_timeout=120)
    app.run()
    app.switch_page("pages/runs.py").run()
    assert not app.exception and app.title[0].value == "Runs"


@pytest.mark.parametrize("page", ["compare", "paper", "sweeps", "registry", "inspect", "runs"])
def test_a_service_that_is_down_is_one_warning_not_a_traceback(page, monkeypatch, tmp_path):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:9")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")  # as dashboard.serve starts it: fail fast
    monkeypatch.setenv("FLAIR_SWEEP_STORAGE", "postgresql://flair@127.0.0.1:9/optuna")
    app = run(page)
    warnings = [w.value for w in app.warning]
    assert len(warnings) == 1 and "\n" not in warnings[0] and "127.0.0.1:9" in warnings[0], warnings


def test_no_runs_yet_is_an_explanation(monkeypatch, tmp_path):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'empty.db'}")
    app = run("compare")
    assert "No pretrain-eval runs logged yet" in texts(app)


def test_the_router_opens_on_compare(env):
    app = AppTest.from_file(str(REPO / "dashboard" / "app.py"), default_timeout=120)
    app.run()
    assert not app.exception and app.title[0].value == "Compare runs"



# ---------------------------------------------------------------------------------------------------- study
STUDY_CLAIM = ("FLAIR beats CLIP, FILIP and DreamLIP on fine-grained t2i R@1 (paper: DOCCI-FG 25.0 vs "
               "DreamLIP 21.6)")
STUDY_REPORT = f"""# Study `seeded-study`: FLAIR against its baselines at one CPU budget

## Main table

| method | fine-grained t2i R@1 |
|---|---:|
| flair (1 seed) | 12.50 [10.94, 14.06] (chance 1.56) |

## Claims

| claim | verdict | numbers |
|---|---|---|
| {STUDY_CLAIM} | **holds** | FLAIR 12.50 [10.94, 14.06] (chance 1.56) vs best baseline clip 10.00 |

## Ablations (FLAIR at its recipe, one setting changed; seeds [0])

| group | setting | fine-grained t2i R@1 |
|---|---|---:|
| loss | global sigmoid only | 10.00 |

![validation_curves](validation_curves.png)
"""


def seed_study(root: Path) -> dict:
    """An MLflow store as flows/equal_budget_study.py leaves it: a finished study (parent run with
    report/report.md and a PNG, two nested runs) and, older, a study whose report is not logged yet (still
    running)."""
    from mlflow import MlflowClient
    from PIL import Image

    uri = f"sqlite:///{root / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri)
    experiment = client.create_experiment("flair-lab-studies",
                                          artifact_location=(root / "artifacts").as_uri())
    # explicit start times: the page orders studies newest first and runs oldest first
    start = 1_750_000_000_000
    client.create_run(experiment, start_time=start, run_name="study-running-study",
                      tags={"study": "running-study", "study_role": "study"})
    parent = client.create_run(experiment, start_time=start + 1000, run_name="study-seeded-study",
                               tags={"study": "seeded-study", "study_role": "study"}).info.run_id
    for key, value in {"budget": "train.epochs=2", "seeds": "[0]", "code_version": "abc123"}.items():
        client.log_param(parent, key, value)
    report = root / "report"
    report.mkdir()
    (report / "report.md").write_text(STUDY_REPORT)
    Image.new("RGB", (8, 8), (200, 30, 30)).save(report / "validation_curves.png")
    for path in sorted(report.iterdir()):
        client.log_artifact(parent, str(path), "report")
    # FLAIR's run logs both modes (its own is flair); the "global sigmoid only" ablation trains CLIP (its last
    # method.name override), so its own mode is global.
    nested = [("methods", "flair", "method.name=flair", {FINE.format(mode="flair"): 12.5,
                                                         FINE.format(mode="global"): 3.0}),
              ("loss", "global sigmoid only",
               "method.name=flair method.name=clip method.settings.loss=sigmoid",
               {FINE.format(mode="global"): 10.0})]
    for number, (group, label, overrides, metrics) in enumerate(nested, 2):
        run = client.create_run(experiment, start_time=start + 1000 * number,
                                run_name=f"{group}/{label}/seed0",
                                tags={"study": "seeded-study", "study_role": "run", "study_group": group,
                                      "study_label": label, "seed": "0", "run_key": f"{number}" * 16,
                                      "mlflow.parentRunId": parent}).info.run_id
        client.log_param(run, "overrides", overrides)
        for key, value in metrics.items():
            client.log_metric(run, key, value)
    return {"uri": uri, "parent": parent}


@pytest.fixture(scope="module")
def studied(tmp_path_factory):
    return seed_study(tmp_path_factory.mktemp("study"))


def test_study_page_shows_the_report_its_images_and_the_nested_runs(studied, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", studied["uri"])
    app = run("study")
    assert app.selectbox[0].options == ["seeded-study", "running-study"]  # newest first, the default
    report = "\n".join(e.value for e in app.markdown)
    assert "## Claims" in report and STUDY_CLAIM in report and "**holds**" in report
    assert "## Ablations" in report and "![" not in report  # the PNG is shown as an image, not a dead link
    assert len(app.get("image")) == 1
    assert studied["parent"] in texts(app)  # the parent run's MLflow link
    runs = frame(app.dataframe[0])
    assert runs[["group", "setting", "seed", "mode"]].values.tolist() == [
        ["methods", "flair", 0, "flair"], ["loss", "global sigmoid only", 0, "global"]]
    # each in its own mode, not FLAIR's global 3.0
    assert runs["fine-grained t2i R@1"].tolist() == [12.5, 10.0]
    assert not app.info


def test_a_study_without_its_report_yet_says_how_to_produce_it(studied, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", studied["uri"])
    app = run("study")
    app.selectbox[0].select("running-study").run()
    assert not app.exception
    info = [e.value for e in app.info]
    assert info[0].startswith("No report logged for study running-study yet") and "make study" in info[0]
    assert "python -m flows.equal_budget_study run --quick" in info[0] and "\n" not in info[0]
    assert info[1] == "No run of this study has finished yet." and not app.dataframe


def test_no_study_experiment_is_one_info_line(env):
    app = run("study")  # the seeded store has runs of flair-lab, but no flair-lab-studies experiment
    assert len(app.info) == 1 and not app.warning and not app.selectbox
    line = app.info[0].value
    assert line.startswith("No study logged yet") and "\n" not in line
    assert "make study" in line and "python -m flows.equal_budget_study run --quick" in line


def test_study_page_with_mlflow_down_is_one_warning(monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:9")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")  # as dashboard.serve starts it: fail fast
    app = run("study")
    warnings = [w.value for w in app.warning]
    assert len(warnings) == 1 and "\n" not in warnings[0] and "127.0.0.1:9" in warnings[0], warnings


def test_the_router_serves_the_study_page(studied, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", studied["uri"])
    app = AppTest.from_file(str(REPO / "dashboard" / "app.py"), default_timeout=120)
    app.run()
    app.switch_page("pages/study.py").run()
    assert not app.exception and app.title[0].value == "Equal-budget study"
