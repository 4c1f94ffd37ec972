"""Runs: trainings in progress and the latest finished ones, their loss and validation curves, the step,
samples/s and ETA, refreshed in place; links to MLflow and to the Prefect flow run."""

from pathlib import Path

import pandas as pd
import streamlit as st

from dashboard import charts, data, live

REFRESH = 10  # seconds between two refreshes of each section (a Streamlit fragment: the page stays put)

st.title("Runs")
settings = data.settings()
st.caption("A training writes its run folder as it goes (`metrics.jsonl` every step, `val_metrics.jsonl` at "
           "each validation): the first section follows those on this machine, live. `pretrain-eval` logs a "
           "run to MLflow only once it is trained and evaluated, so the MLflow section shows RUNNING runs "
           "(while one is being logged, or any run that logs as it trains) and the latest finished. Both "
           f"refresh every {REFRESH} s.")


def flow_links(ids: list[str]) -> str:
    if not ids:
        return ""
    if not settings.prefect_ui:
        return "Prefect flow run " + ", ".join(f"`{i}`" for i in ids) + " (PREFECT_API_URL is not set)"
    return "Prefect flow run: " + " · ".join(f"[{i[:8]}]({live.flow_run_link(settings.prefect_ui, i)})"
                                             for i in ids)


def standing(row: pd.Series, running: bool) -> None:
    """Where one run stands: step of total, samples/s, time to its last step."""
    step, rate, eta = st.columns(3)
    total = row["total"]
    step.metric("step", f"{row['step']} / {int(total)}" if pd.notna(total) else f"{row['step']}")
    rate.metric("samples/s", f"{row['samples/s']:.1f}" if pd.notna(row["samples/s"]) else "—")
    if running:
        eta.metric("ETA", live.duration(row["eta_seconds"]) if pd.notna(row["eta_seconds"]) else "—")
    else:
        eta.metric("ETA", "—")


def curves(history: pd.DataFrame) -> None:
    """Loss terms and validation metrics against the step, side by side."""
    loss, validation = st.columns(2)
    unvalidated = "No validation logged (train.validate_every is not set, or none has run yet)."
    for column, prefix, title, missing in ((loss, "loss/", "loss", "No loss logged yet."),
                                           (validation, "val/", "validation", unvalidated)):
        shown = history[history["metric"].str.startswith(prefix)]
        with column:
            if shown.empty:
                st.info(missing)
            else:
                st.altair_chart(charts.curves_chart(shown, title), width="stretch")


def table(found: pd.DataFrame, first: list[str]) -> pd.DataFrame:
    shown = found.assign(ETA=[live.duration(x) if pd.notna(x) else "" for x in found["eta_seconds"]],
                         prefect=[live.flow_run_link(settings.prefect_ui, ids[0]) if ids else ""
                                  for ids in found["flow_runs"]])
    return shown[[*first, "step", "total", "samples/s", "ETA", "prefect"]]


@st.fragment(run_every=REFRESH)
def run_folders() -> None:
    st.subheader("Training on this machine")
    found = live.run_folders(settings.runs_root)
    if found.empty:
        st.info(f"No run folder under {settings.runs_root}: a training started by `pretrain-eval`, the study "
                "or `flair train --out runs/...` appears here as soon as it writes its first step.")
        return
    training = (found["state"] == "training").sum()
    st.caption(f"{training} training now (a step in the last {live.STALE // 60} min), newest first; "
               "\"stopped\": short of its last step and quiet since (killed, or waiting to resume). The "
               "Prefect flow run is known once the flow evaluates the folder.")
    st.dataframe(table(found, ["folder", "method", "state"]).assign(updated=found["updated"]),
                 hide_index=True, width="stretch",
                 column_config={"prefect": st.column_config.LinkColumn("Prefect", display_text="flow run"),
                                "samples/s": st.column_config.NumberColumn(format="%.1f")})
    default = int(found.index[found["state"] == "training"][0]) if training else 0
    folder = st.selectbox("Follow", found["folder"], index=default, key="follow_folder")
    row = found[found["folder"] == folder].iloc[0]
    standing(row, row["state"] == "training")
    if links := flow_links(row["flow_runs"]):
        st.markdown(links)
    curves(live.run_folder_history(Path(row["path"])))


@st.fragment(run_every=REFRESH)
def mlflow_runs() -> None:
    st.subheader("In MLflow")
    try:
        found = live.live_runs(settings.tracking_uri, settings.runs_root)
    except data.Unavailable as err:
        st.warning(str(err), icon=":material/cloud_off:")
        return
    if found.empty:
        st.info("No MLflow run with a training curve yet.")
        return
    running = (found["status"] == "RUNNING").sum()
    st.caption(f"{running} RUNNING, then the {len(found) - running} newest finished runs with a training "
               "curve.")
    shown = table(found, ["run", "experiment", "status", "method", "started"]).assign(link=found["link"])
    st.dataframe(shown,
                 hide_index=True, width="stretch",
                 column_config={"prefect": st.column_config.LinkColumn("Prefect", display_text="flow run"),
                                "link": st.column_config.LinkColumn("MLflow", display_text="open run"),
                                "samples/s": st.column_config.NumberColumn(format="%.1f")})
    labels = [f"{r['run']} · {r['status']}" for _, r in found.iterrows()]
    label = st.selectbox("Follow", labels, key="follow_run")
    row = found.iloc[labels.index(label)]
    standing(row, row["status"] == "RUNNING")
    st.markdown(" · ".join(x for x in (f"[MLflow run]({row['link']})", flow_links(row["flow_runs"])) if x))
    try:
        curves(live.run_history(settings.tracking_uri, row["run_id"]))
    except data.Unavailable as err:
        st.warning(str(err), icon=":material/cloud_off:")


run_folders()
mlflow_runs()
