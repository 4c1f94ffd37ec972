"""Study: the equal-budget study's report (main table, claims with verdicts, ablations, curves) and its
runs."""

import re

import streamlit as st

from dashboard import data

HOW = ("`make study` (the default study, about 2 h) or `python -m flows.equal_budget_study run --quick` "
       "(the tiny one, minutes)")
IMAGE = re.compile(r"^!\[[^\]]*\]\(([^)\s]+)\)\s*$")  # how flair_lab/equal_budget_report.py links its PNGs

st.title("Equal-budget study")
st.caption("FLAIR against CLIP, FILIP and DreamLIP at one training budget, with the paper's ablations, as "
           "the study flow (flows/equal_budget_study.py) wrote and logged it to MLflow. Verdicts are "
           "computed from the intervals, never tuned; the paper's numbers beside ours are secondary [S] and "
           "not comparable in value.")

settings = data.settings()
studies = data.or_stop(data.paper_studies, settings.tracking_uri)
if studies.empty:
    st.info(f"No study logged yet: run {HOW}; its report is logged to MLflow experiment "
            f"`{data.STUDY_EXPERIMENT}`.")
    st.stop()

# Names are unique per experiment (the flow reuses a study's parent run), but a store may hold runs of older
# flows: the run id tells two of the same name apart.
labels = {}
for _, row in studies.iterrows():
    label = row["study"] if row["study"] not in labels else f"{row['study']} ({row['run_id'][:8]})"
    labels[label] = row
chosen = labels[st.selectbox("Study", list(labels))]  # newest first
st.caption(f"Budget per run: `{chosen['budget'] or '?'}` · data seeds {chosen['seeds'] or '?'} · library "
           f"code `{chosen['code_version'][:20] or '?'}` · [MLflow parent run]({chosen['link']})")

report = data.or_stop(data.paper_study_report, settings.tracking_uri, chosen["run_id"])
if report["markdown"] is None:
    # The flow logs the report after the last run: a study still running (or stopped) has runs but no report.
    st.info(f"No report logged for study {chosen['study']} yet: it is logged when the study finishes — run "
            f"{HOW}, which resumes where it stopped.")
else:
    # Streamlit cannot resolve the report's relative image links: drop them from the text and show the
    # downloaded PNGs below it, in the report's order (then any the text does not link).
    lines, linked = [], []
    for line in report["markdown"].splitlines():
        match = IMAGE.match(line)
        if match:
            linked.append(match.group(1))
        else:
            lines.append(line)
    st.markdown("\n".join(lines))
    names = [n for n in linked if n in report["images"]] + [n for n in report["images"] if n not in linked]
    for column, name in zip(st.columns(max(1, min(3, len(names)))) * len(names), names, strict=False):
        column.image(report["images"][name], caption=name.removesuffix(".png").replace("_", " "))

st.subheader("Runs of the study")
members = data.or_stop(data.paper_study_runs, settings.tracking_uri, chosen["run_id"])
if members.empty:
    st.info("No run of this study has finished yet.")
    st.stop()
st.dataframe(members.style.format({"fine-grained t2i R@1": "{:.2f}"}, na_rep="—"), hide_index=True,
             width="stretch",
             column_config={"link": st.column_config.LinkColumn("MLflow run", display_text="open run")})
st.caption("One nested MLflow run per configuration and seed, in the order the flow ran them; fine-grained "
           "t2i R@1 (%) on the built-in test split in the run's own scoring mode (— when the run did not log "
           "it). Rows with the same run key are one training standing for several settings (FLAIR's recipe "
           "is also \"TCS only\" and \"K 4\").")
