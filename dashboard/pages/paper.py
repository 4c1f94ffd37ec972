"""Paper: the published numbers of FLAIR and its baselines beside this platform's runs, scale stated."""

import pandas as pd
import streamlit as st

from dashboard import data
from flair_core.evaluation.comparison import main_table
from flair_core.evaluation.headline import Column, own_mode_key

EXPECTED = {  # the tables the page shows, in its order; an id the data file lacks is said to be missing
    "standard_retrieval": "COCO / Flickr30k retrieval R@1 of the released checkpoints",
    "main_comparison": "main comparison with other vision-language models",
    "yfcc15m_comparison": "SigLIP and FLAIR trained on the same data (YFCC15M-recap)",
    "loss_ablation": "loss-component ablation",
    "num_sub_captions": "number of sub-captions K",
    "baseline_standard_retrieval": "baselines' own COCO / Flickr30k retrieval R@1",
    "baseline_long_retrieval": "baselines' long-caption retrieval",
    "long_retrieval": "FLAIR's long-caption retrieval (DCI, IIW, ShareGPT4V, Urban-1K)",
    "iiw_fg_retrieval": "IIW-FG fine-grained retrieval",
    "segmentation_beyond_voc20": "zero-shot segmentation beyond VOC20",
}
MARK = {"primary": "[P]", "secondary": "[S]"}
LEGEND = {"primary": "[P] primary — the authors' own README or code",
          "secondary": "[S] secondary — third-party notes of the paper"}
BADGE = {"primary": ("green", ":material/verified:"), "secondary": ("orange", ":material/menu_book:")}
# This platform's runs beside the paper's retrieval tables, each in its method's own mode.
SCALE = (Column("standard t2i R@1", own_mode_key("builtin_standard", "t2i_r1")),
         Column("standard i2t R@1", own_mode_key("builtin_standard", "i2t_r1")),
         Column("fine-grained t2i R@1", own_mode_key("builtin_fine_grained", "t2i_r1")),
         Column("long t2i R@1", own_mode_key("builtin_long", "t2i_r1")))

st.title("The paper's numbers")
settings = data.settings()
published = data.or_stop(data.paper, settings.paper_file)
source = published.get("source", {})
legend = {**LEGEND, **published.get("provenance", {})}
st.markdown(f"**Source:** {source.get('paper', '?')} — [{source.get('url', '')}]({source.get('url', '')})  \n"
            f"**Taken from:** {source.get('retrieved_from', '?')}  \n"
            f"**Scale:** {published.get('scale', '?')}")
st.caption(f"Every table is marked with its provenance: {legend['primary']}; {legend['secondary']}. "
           "Secondary values are shown only marked as such.")

tables = {t["id"]: t for t in published.get("tables", [])}
for table_id in [*EXPECTED, *(t for t in tables if t not in EXPECTED)]:
    table = tables.get(table_id)
    title = EXPECTED.get(table_id) or (table or {}).get("title", table_id)
    if table is None:
        st.subheader(title)
        st.info(f"Not in `{settings.paper_file.name}`: not recovered from any source, primary or secondary "
                "(the file's header says where we looked). Nothing is shown rather than numbers we could not "
                "check.")
        continue
    provenance = table["provenance"]
    st.subheader(f"{MARK[provenance]} {title}")
    color, icon = BADGE[provenance]
    st.badge(legend[provenance], color=color, icon=icon)
    st.caption(" · ".join(
        part for part in (table.get("title"), table.get("source_table"), table.get("metric_unit"),
                          f"from {table['source_section']}" if table.get("source_section") else "")
        if part))
    rows = [{**{k: v for k, v in r.items() if k != "values"}, **r["values"]} for r in table["rows"]]
    labels = list(dict.fromkeys(k for r in table["rows"] for k in r if k != "values"))
    columns = [c for c in table.get("columns", []) if any(c in r["values"] for r in table["rows"])]
    frame = pd.DataFrame(rows, columns=labels + columns)
    frame[labels] = frame[labels].fillna("")
    st.dataframe(frame.style.format(precision=table.get("precision", 1), na_rep="–", subset=columns),
                 hide_index=True, width="stretch")
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
scale = main_table({r["run_id"]: data.logged_metrics(r) for _, r in newest.iterrows()},
                   {r["run_id"]: data.own_mode(r["method"]) for _, r in newest.iterrows()}, SCALE)
rows = []
for _, run in newest.iterrows():
    rows.append({"method": run["method"], "model": run["model"], "training images": run["train_images"],
                 "image px": run["image_size"], "epochs": run["epochs"], "batch": run["batch_size"],
                 **{c.label: scale.value(run["run_id"], c.key) for c in scale.columns}})
st.dataframe(pd.DataFrame(rows).style.format(precision=2, subset=[c for c in rows[0] if "R@1" in c]),
             hide_index=True, width="stretch")
st.caption("Not comparable number for number: the paper trains a 150 M-parameter ViT-B/16 on 2.8–27 M real "
           "image–caption pairs on GPUs and evaluates on COCO/Flickr; these runs train the CPU preset on the "
           "built-in synthetic scenes for minutes and evaluate on their test split. They show the pipeline, "
           "not the paper's accuracy.")
