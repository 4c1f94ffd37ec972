"""Sweeps: Optuna studies — best trials (or the Pareto front) and Optuna's own plots: optimization history,
fANOVA importances, parallel coordinates, the objective against each setting, the timeline."""

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
           + ", ".join(f"{m} ({d})" for m, d in zip(objectives, result["directions"], strict=True))
           + " · plots by Optuna (`optuna.visualization`), of completed trials unless they say otherwise")

counts = trials["state"].value_counts()
columns = st.columns(4)
for column, state in zip(columns, ("COMPLETE", "PRUNED", "FAIL", "RUNNING"), strict=True):
    column.metric(state.lower(), int(counts.get(state, 0)))


def plot(figure) -> None:
    figure.update_yaxes(automargin=True)  # long setting names (importances) get the room they need
    st.plotly_chart(figure, width="stretch", theme=None)  # Optuna's own colours and colour bars


metric = st.selectbox("Objective", objectives) if len(objectives) > 1 else objectives[0]
plots = data.or_stop(data.study_plots, settings.sweep_storage, name, objectives.index(metric))
complete = int(counts.get("COMPLETE", 0))
if not result["best"]:
    st.info(f"No trial has completed yet: the best trial and Optuna's plots appear once {data.PLOTTED} have.")
else:
    st.subheader("Best trial" if len(objectives) == 1 else "Pareto front")
    best = pd.DataFrame([{"trial": b["number"], **dict(zip(objectives, b["values"], strict=True)),
                          **b["params"]}
                         for b in result["best"]])
    st.dataframe(best.style.format("{:.4g}", subset=best.select_dtypes("float").columns), hide_index=True,
                 width="stretch")
    if plots["pareto"] is not None:
        plot(plots["pareto"])
    if plots["history"] is None:
        st.info(f"Optuna's plots need at least {data.PLOTTED} completed trials; {complete} so far.")
    else:
        st.subheader(f"Optimization history of {metric}")
        plot(plots["history"])
        st.subheader("Parameter importances (fANOVA)")
        if isinstance(plots["importances"], str):
            st.info(plots["importances"])
        else:
            plot(plots["importances"])
        st.subheader("Parallel coordinates")
        plot(plots["parallel"])
        st.subheader(f"{metric} against each setting")
        plot(plots["slice"])

st.subheader("Trials over time")
if plots["timeline"] is not None:
    plot(plots["timeline"])
st.dataframe(trials.style.format("{:.4g}", subset=trials.select_dtypes("float").columns, na_rep="—"),
             hide_index=True, width="stretch")
