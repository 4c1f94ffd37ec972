"""Inspect: a registered model's top-k images for a caption (scores, ranks, whether each is a true image of
the caption, and for FLAIR-family methods the caption's attention over each), a second model beside it on the
same caption, and the built-in fine-grained queries one of the two finds at rank 1 and the other does not."""

import pandas as pd
import streamlit as st

from dashboard import data
from flair_core import method_of
from flair_core.data.errors import DataError

GALLERY = 512  # built-in test images ranked per caption
NONE = "none"
TRUE, FALSE = "✓", "✗"  # a thumbnail is (not) a true image of the caption
THUMB = 140  # px

st.title("Inspect a model")
settings = data.settings()
state = st.session_state
versions = data.or_stop(data.registry, settings.tracking_uri)
if versions.empty:
    st.info("No registered model yet: run the main job (`make demo`).")
    st.stop()
images = data.or_stop(data.test_images, settings.data_root, GALLERY)
png = {x["key"]: x["png"] for x in images}

# The method under study first, then the baselines; newest version first.
ordered = versions.assign(baseline=versions["method"].map(data.is_baseline)).sort_values(
    ["baseline", "model", "version"], ascending=[True, True, False])
models = {f"{r['model']} v{r['version']}" + (f" ({r['aliases']})" if r["aliases"] else ""): r
          for _, r in ordered.iterrows()}


def newly_opened() -> int | None:
    """The query of a row the user has just selected in the disagreements list (drawn by the last run, whose
    rows' queries it left in the session), else None."""
    listed = state.get("disagreement_key")
    selection = (state.get(listed) or {}).get("selection") or {} if listed else {}
    rows = selection.get("rows") or []
    queries = state.get("disagreement_queries", [])
    query = queries[rows[0]] if rows and rows[0] < len(queries) else None
    if (listed, query) == state.get("opened"):
        return None
    state["opened"] = (listed, query)
    return query


# A query opened from the list becomes the caption, and its own image the picked one. Set before the
# widgets are drawn: Streamlit refuses a change to a widget's state after it.
if (opened := newly_opened()) is not None:
    fine = data.or_stop(data.builtin_queries, settings.data_root)
    source = fine["source"][opened]
    if source in png:
        state["image"] = state["caption_image"] = source
    state["caption"] = fine["texts"][opened]

model_column, image_column, beside_column, k_column = st.columns([3, 3, 3, 1])
label_a = model_column.selectbox("Model", list(models), key="model")
key = image_column.selectbox("Built-in test image", list(png), key="image")
label_b = beside_column.selectbox("Beside it", [NONE, *(m for m in models if m != label_a)], key="beside",
                                  help="a second registered model, ranking the same caption")
k = int(k_column.number_input("top k", min_value=1, max_value=20, value=5, key="k"))
chosen = [label_a] + ([label_b] if label_b != NONE else [])
nets = {label: data.or_stop(data.model, settings.tracking_uri, models[label]["model"],
                            int(models[label]["version"])) for label in chosen}


def disagreements(label_a: str, label_b: str) -> None:
    """Both runs' per-query records of the built-in fine-grained set, each in its method's own mode: the
    queries one finds at rank 1 and the other does not, selectable."""
    st.subheader("Where the two disagree")
    records = {label: data.or_stop(data.query_records, settings.tracking_uri, models[label]["run_id"])
               for label in (label_a, label_b)}
    kept_none = [label for label, found in records.items() if found is None]
    if kept_none:
        st.info(f"{' and '.join(kept_none)}: no per-query records of the built-in fine-grained test set "
                "(logged before they were kept), so no disagreements to list.")
        return
    fine = data.or_stop(data.builtin_queries, settings.data_root)
    try:
        found = data.disagreements(records[label_a], method_of(nets[label_a]).primary_mode,
                                   records[label_b], method_of(nets[label_b]).primary_mode)
    except ValueError as err:
        st.info(f"No disagreements list: {err}.")
        return
    queries = len(records[label_a]["t2i/query"])
    if len(found) and found["query"].max() >= len(fine["texts"]):
        st.info(f"No disagreements list: the records were scored on other built-in data than "
                f"{settings.data_root} ({queries} queries).")
        return
    ahead = found["first"].value_counts().reindex(["a", "b"], fill_value=0)
    st.caption(f"Each run's evaluation records of the {queries} built-in fine-grained test queries, each "
               f"model in its own scoring mode: **{label_a}** finds {ahead['a']} at rank 1 that "
               f"**{label_b}** does not; **{label_b}** finds {ahead['b']} that **{label_a}** does not. "
               "Select a row to open its query: its caption and its image go into the boxes above the "
               "comparison.")
    left, right = st.columns(2)
    left.metric(f"at rank 1 only for {label_a}", int(ahead["a"]))
    right.metric(f"at rank 1 only for {label_b}", int(ahead["b"]))
    if found.empty:
        return
    first = {"a": label_a, "b": label_b}
    table = pd.DataFrame({"query": [fine["texts"][q] for q in found["query"]],
                          "at rank 1 only for": found["first"].map(first),
                          f"rank · {label_a}": found["rank_a"], f"rank · {label_b}": found["rank_b"],
                          "query #": found["query"]})
    listed = f"disagreement:{label_a}:{label_b}"  # a new pair, a new list: no stale selection
    st.dataframe(table, key=listed, on_select="rerun", selection_mode="single-row", hide_index=True,
                 height=min(36 * (len(table) + 1) + 3, 250), width="stretch")
    state["disagreement_key"], state["disagreement_queries"] = listed, found["query"].tolist()


if label_b != NONE:
    disagreements(label_a, label_b)

upload = st.file_uploader("…or upload an image", type=["png", "jpg", "jpeg"])
picked = next(x for x in images if x["key"] == key)
if state.get("caption_image") != key:  # another image picked: its own first sentence
    state["caption_image"], state["caption"] = key, picked["sentences"][0]
caption = st.text_input("Caption", key="caption")
image, target, raw = data.image(picked["png"], f"built-in test image {key}"), key, picked["png"]
if upload is not None:  # untrusted bytes: checked once here, then only the decoded image is passed on
    try:
        raw = upload.getvalue()
        image, target = data.image(raw, f"upload {upload.name!r}"), "upload"
    except DataError as err:
        st.warning(f"{err}: showing the built-in test image {key} instead", icon=":material/broken_image:")
# True images: the picked one, and where the caption is a built-in test query every image its facts hold for.
truth = {target} | data.true_images(settings.data_root, caption)
others = f" and the {len(truth) - 1} other test images its facts hold for" if len(truth) > 1 else ""
st.caption(f"{TRUE} a true image of the caption ({target}{others}), {FALSE} not. Each model ranks the "
           f"first {GALLERY} built-in test images (and the upload) in its own scoring mode; rank 1 = best, "
           "ties count against the image.")


def ranked(label: str) -> None:
    """One model's column: the picked image (with the caption's attention), its rank, the top k."""
    name, version = models[label]["model"], int(models[label]["version"])
    method = method_of(nets[label])
    attention = "attention" in method.segmentation_modes
    st.subheader(label)
    if attention:
        overlay, zero = data.attention_overlay(settings.tracking_uri, name, version, image, caption)
        st.image(overlay, caption=f"attention of the caption over {target} (zero-slot mass {zero:.2f})",
                 width=2 * THUMB)
    else:
        st.image(image, caption=f"{target}: {method.name} has no text-conditioned attention", width=2 * THUMB)
    ranks = data.caption_ranks(settings.tracking_uri, name, version, settings.data_root, GALLERY, caption,
                               image if target == "upload" else None)
    rank = int(ranks.loc[ranks["image"] == target, "rank"].iloc[0])
    st.metric(f"rank of {target} for the caption", f"{rank} / {len(ranks)}")
    top = ranks.head(k)
    st.image([data.thumbnail(settings.tracking_uri, name, version, raw if shown == "upload" else png[shown],
                             shown, caption if attention else None) for shown in top["image"]],
             caption=[f"#{r} {TRUE if shown in truth else FALSE} {shown} · {score:.3f}"
                      for shown, r, score in zip(top["image"], top["rank"], top["score"], strict=True)],
             width=THUMB)
    st.caption(f"top {k} of {method.name} in its own mode ({method.primary_mode}): rank, {TRUE}/{FALSE}, "
               "image, score" + ("; the caption's attention over each" if attention else ""))


for column, label in zip(st.columns(len(chosen)), chosen, strict=True):
    with column:
        ranked(label)
