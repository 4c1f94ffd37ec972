"""Paper: the published numbers of FLAIR and its baselines beside this platform's runs, scale stated."""

import pandas as pd
import streamlit as st

from dashboard import data

EXPECTED = {  # what the dashboard would show from the paper, in its order
    "standard_retrieval": "COCO / Flickr30k retrieval R@1",
    "fine_grained_retrieval": "DOCCI-FG / IIW-FG fine-grained retrieval",
    "long_retrieval": "long-caption retrieval",
    "zero_shot_segmentation": "zero-shot segmentation (VOC20, …)",
    "loss_ablation": "loss-component ablation",
    "num_sub_captions": "number of sub-captions K",
}

st.title("The paper's numbers")
settings = data.settings()
published = data.or_stop(data.paper, settings.paper_file)
source = published.get("source", {})
st.markdown(f"**Source:** {source.get('paper', '?')} — [{source.get('url', '')}]({source.get('url', '')})  \n"
            f"**Taken from:** {source.get('retrieved_from', '?')}  \n**Scale:** {published.get('scale', '?')}")

tables = {t["id"]: t for t in published.get("tables", [])}
for table_id, title in EXPECTED.items():
    table = tables.get(table_id)
    st.subheader(title)
    if table is None:
        st.info(f"Not in `{settings.paper_file.name}`: no primary source for this table was available to us "
                "(the file's header says where we looked). Nothing is shown rather than numbers we could not check.")
        continue
    st.caption(f"{table.get('title', '')} · {table.get('source_table', '')} · {table.get('metric_unit', '')}")
    frame = pd.DataFrame([{"method": r["method"], "data": r.get("data", ""), **r["values"]} for r in table["rows"]])
    st.dataframe(frame.style.format(precision=1, subset=frame.select_dtypes("number").columns), hide_index=True,
                 width="stretch")
    if table.get("notes"):
        st.caption(table["notes"])

st.subheader("This platform's runs, for scale")
try:
    runs = data.runs(settings.tracking_uri)
except data.Unavailable as err:
    st.warning(str(err), icon=":material/cloud_off:")
    st.stop()
if runs.empty:
    st.info("No pretrain-eval runs logged yet: run the main job (`make demo`).")
    st.stop()
newest = runs.sort_values("started", ascending=False).drop_duplicates("method")
rows = []
for _, run in newest.iterrows():
    mode = data.own_mode(run["method"])
    rows.append({"method": run["method"], "model": run["model"], "training images": run["train_images"],
                 "image px": run["image_size"], "epochs": run["epochs"], "batch": run["batch_size"],
                 "standard t2i R@1": run.get(f"retrieval/builtin_standard/{mode}/t2i_r1"),
                 "standard i2t R@1": run.get(f"retrieval/builtin_standard/{mode}/i2t_r1"),
                 "fine-grained t2i R@1": run.get(f"retrieval/builtin_fine_grained/{mode}/t2i_r1"),
                 "long t2i R@1": run.get(f"retrieval/builtin_long/{mode}/t2i_r1")})
st.dataframe(pd.DataFrame(rows).style.format(precision=2, subset=[c for c in rows[0] if "R@1" in c]),
             hide_index=True, width="stretch")
st.caption("Not comparable number for number: the paper trains a 150 M-parameter ViT-B/16 on 2.8–27 M real "
           "image–caption pairs on GPUs and evaluates on COCO/Flickr; these runs train the CPU preset on the "
           "built-in synthetic scenes for minutes and evaluate on their test split. They show the pipeline, "
           "not the paper's accuracy.")
