"""Compare: FLAIR and the CLIP, FILIP and DreamLIP baselines on every benchmark and mode."""

import pandas as pd
import streamlit as st

from dashboard import charts, data
from flair_core.evaluation.comparison import format_noise, main_table
from flair_core.evaluation.headline import is_headline

st.title("Compare runs")
st.caption(f"Each method in its own scoring mode ({data.own_modes_text()}) on the built-in test split. R@1, "
           "mIoU and top-1 in percent; beside each its 95 % bootstrap interval (twin-pair clusters of "
           "queries, or images) and its reference levels (chance; majority class), so a gap inside the "
           "noise, or a score at a trivial predictor's level, reads as one.")


settings = data.settings()
runs = data.or_stop(data.runs, settings.tracking_uri)
if runs.empty:
    st.info("No pretrain-eval runs logged yet: run the main job (`make demo`) or a `pretrain-eval` "
            "deployment.")
    st.stop()

left, level_column, middle, right = st.columns(4)
presets = left.multiselect("Preset", sorted(runs["preset"].unique()), default=sorted(runs["preset"].unique()))
levels = level_column.multiselect("Data level", sorted(runs["data_level"].unique()),
                                  default=sorted(runs["data_level"].unique()))
versions = middle.multiselect("Data version", sorted(runs["data_hash"].unique()),
                              default=sorted(runs["data_hash"].unique()))
first, last = runs["started"].min().date(), runs["started"].max().date()
dates = right.date_input("Started between", (first, last), min_value=first, max_value=last)
newest = st.toggle("Newest run per method only", value=True)

shown = runs[runs["preset"].isin(presets) & runs["data_level"].isin(levels)
             & runs["data_hash"].isin(versions)]
if isinstance(dates, tuple) and len(dates) == 2:
    shown = shown[(shown["started"].dt.date >= dates[0]) & (shown["started"].dt.date <= dates[1])]
shown = shown.sort_values("started", ascending=False)
if newest:
    shown = shown.drop_duplicates("method")
if shown.empty:
    st.info("No run matches these filters.")
    st.stop()

# The main table, as the main job prints it (flair_lab/main_job_table.py): each run in its method's own mode.
main = main_table({r["run_id"]: data.logged_metrics(r) for _, r in shown.iterrows()},
                  {r["run_id"]: data.own_mode(r["method"]) for _, r in shown.iterrows()})
rows = []
for _, run in shown.iterrows():
    row = {"method": run["method"], "run": run["run"], "preset": run["preset"], "level": run["data_level"],
           "data": run["data_hash"], "started": run["started"].strftime("%Y-%m-%d %H:%M")}
    for column in main.columns:
        row[column.label] = main.value(run["run_id"], column.key)
        if column.family == "retrieval":  # blank for runs logged before intervals existed
            row[f"{column.label} 95 % CI · chance"] = format_noise(*main.noise(run["run_id"], column.key))
    rows.append(row)
metric_names = [column.label for column in main.columns]
table = pd.DataFrame(rows).astype(dict.fromkeys(metric_names, float))  # a metric no shown run has: NaN

baselines = sorted(set(table["method"]), key=lambda m: (not data.is_baseline(m), m))  # a baseline first
baseline = st.selectbox("Deltas against", baselines, help="the newest shown run of this method")
reference = shown[shown["method"] == baseline].iloc[0]["run_id"]

# Each delta is paired: both runs' per-query records on the same queries, resampled by twin-pair cluster
# (the promotion gate's function); its p-values are Holm-corrected over every delta on the page.
pairs = {}
for run_id in shown["run_id"]:
    for column in main.columns:
        keys = main.source(run_id, column), main.source(reference, column)
        if run_id != reference and all(keys):
            pairs[(run_id, column.label)] = (run_id, keys[0]), (reference, keys[1])
paired = data.or_stop(data.paired_deltas, settings.tracking_uri, pairs)


def delta_cell(run_id: str, name: str) -> str:
    if run_id == reference:
        return "reference"
    if (run_id, name) not in paired:
        return ""
    if (d := paired[(run_id, name)]) is None:
        return "not paired (no per-query records)"
    return f"{d['value']:+.2f} [{d['low']:+.2f}, {d['high']:+.2f}] p {d['p']:.3f}"


def delta_colour(run_id: str, name: str) -> str:
    if not (d := paired.get((run_id, name))) or not d["holds"]:
        return ""
    return "color: #0a7d32; font-weight: 600" if d["value"] > 0 else "color: #b3261e; font-weight: 600"


deltas = [f"Δ {name}" for name in metric_names]
for name, delta in zip(metric_names, deltas, strict=True):
    table[delta] = [delta_cell(run_id, name) for run_id in shown["run_id"]]
colours = pd.DataFrame({delta: [delta_colour(run_id, name) for run_id in shown["run_id"]]
                        for name, delta in zip(metric_names, deltas, strict=True)}, index=table.index)
st.subheader(f"Key metrics, deltas against {baseline}")
st.caption("Δ: paired difference in points [95 % interval] and its Holm-corrected p-value; coloured only "
           "where p < 0.05. Runs without per-query records (logged before they were kept) show no Δ.")
st.dataframe(table.style.format(precision=2, subset=metric_names).apply(lambda _: colours, axis=None,
                                                                         subset=deltas),
             hide_index=True, width="stretch")

st.subheader("Side by side")
labels = {r["run_id"]: r["method"] if newest else f"{r['method']} · {r['run']}" for _, r in shown.iterrows()}
side = data.uncertainty_frame(main, labels)
if side.empty:
    st.info("None of the shown runs logged a metric of the table above.")
else:
    st.altair_chart(charts.uncertainty_chart(side), width="stretch")
    st.caption("Each bar: the value, the black line through it its 95 % bootstrap interval (where the run "
               "logged one); each metric's ticks: its chance level (black) and, for segmentation and "
               "classification, the majority-class level (orange). A bar whose interval holds chance is grey "
               "and faded: it is no better than chance. Bars of runs logged before intervals existed are "
               "lighter and have no line.")

st.subheader("Every benchmark and mode")
metric_columns = sorted(c for c in runs.columns if is_headline(c))  # every mode's R@1, mIoU, top-1
full = shown.set_index("run")[metric_columns].T.dropna(how="all")
full.columns = [f"{shown.set_index('run').loc[r, 'method']} · {r}" for r in full.columns]
st.dataframe(full.style.format(precision=2), width="stretch")
st.caption("MLflow runs: " + " · ".join(f"[{r['run']}]({r['link']})" for _, r in shown.iterrows()))

st.subheader("What each model has learned, by fact type")
st.caption("Built-in fine-grained set, each run in its own mode: t2i R@1 by the query's fact type, and "
           "minimal-pair accuracy (the true image scored above its twin, which differs in one change) per "
           "change. Each cell: value [95 % interval] and its chance; the greener, the further its interval "
           "sits above chance; grey where the interval holds chance. Runs logged before these diagnostics "
           "show \"not measured\".")
facts, fact_colours = data.fact_type_table(shown)
st.dataframe(facts.style.apply(lambda _: fact_colours, axis=None), width="stretch")
