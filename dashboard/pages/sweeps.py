"""Sweeps: Optuna studies — best trials, parameter importances, the objective against each setting, states
over time."""

import pandas as pd
import streamlit as st

from dashboard import data

st.title("Sweeps")
settings = data.settings()
names = data.or_stop(data.studies, settings.sweep_storage)
if not names:
    st.info(f"No Optuna study in {settings.sweep_storage} yet: run `make sweep` (or the `sweep` deployment).")
    st.stop()
name = st.selectbox("Study", names, index=len(names) - 1)
result = data.or_stop(data.study, settings.sweep_storage, name)
trials, objectives = result["trials"], result["objectives"]
st.caption(f"Storage: {settings.sweep_storage} · objectives: "
           + ", ".join(f"{m} ({d})" for m, d in zip(objectives, result["directions"], strict=True)))

counts = trials["state"].value_counts()
columns = st.columns(4)
for column, state in zip(columns, ("COMPLETE", "PRUNED", "FAIL", "RUNNING"), strict=True):
    column.metric(state.lower(), int(counts.get(state, 0)))

if not result["best"]:
    st.info("No trial has completed yet.")
else:
    st.subheader("Best trial" if len(objectives) == 1 else "Pareto front")
    best = pd.DataFrame([{"trial": b["number"], **dict(zip(objectives, b["values"], strict=True)),
                          **b["params"]}
                         for b in result["best"]])
    st.dataframe(best.style.format("{:.4g}", subset=best.select_dtypes("float").columns), hide_index=True,
                 width="stretch")

st.subheader("Parameter importances (fANOVA)")
for metric, values in result["importances"].items():
    if values:
        st.caption(metric)
        st.bar_chart(pd.DataFrame({"setting": list(values), "importance": list(values.values())}),
                     x="setting", y="importance", horizontal=True, height=60 + 40 * len(values))
if not any(result["importances"].values()):
    st.info("Importances need at least 4 completed trials.")

metric = st.selectbox("Objective", objectives) if len(objectives) > 1 else objectives[0]
scored = trials.dropna(subset=[metric])
st.subheader(f"{metric} against each setting")
for left_right, setting in zip(st.columns(2) * ((len(result["space"]) + 1) // 2), result["space"],
                               strict=False):
    if setting in scored:
        left_right.caption(setting)
        frame = scored[[setting, metric, "state"]].copy()
        if frame[setting].dtype == object:
            frame[setting] = frame[setting].astype(str)
        left_right.scatter_chart(frame, x=setting, y=metric, color="state", height=260)

st.subheader("Trials over time")
timeline = trials.dropna(subset=["started"]).copy()
if not timeline.empty:
    timeline["started"] = pd.to_datetime(timeline["started"])
    st.scatter_chart(timeline, x="started", y="number", color="state", height=260)
st.dataframe(trials.style.format("{:.4g}", subset=trials.select_dtypes("float").columns, na_rep="—"),
             hide_index=True, width="stretch")
