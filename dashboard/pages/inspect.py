"""Inspect: a registered model's text-conditioned attention over an image and the caption's retrieval
ranks."""

import streamlit as st

from dashboard import data
from flair_core import method_of
from flair_core.data.errors import DataError

GALLERY = 512  # built-in test images ranked per caption

st.title("Inspect a model")
settings = data.settings()
versions = data.or_stop(data.registry, settings.tracking_uri)
if versions.empty:
    st.info("No registered model yet: run the main job (`make demo`).")
    st.stop()
images = data.or_stop(data.test_images, settings.data_root, GALLERY)

labels = {f"{r['model']} v{r['version']}" + (f" ({r['aliases']})" if r["aliases"] else ""):
          (r["model"], r["version"])
          for _, r in versions.sort_values(["model", "version"], ascending=[True, False]).iterrows()}
left, right = st.columns(2)
name, version = labels[left.selectbox("Model", list(labels))]
keys = [x["key"] for x in images]
key = right.selectbox("Built-in test image", keys)
upload = st.file_uploader("…or upload an image", type=["png", "jpg", "jpeg"])
picked = next(x for x in images if x["key"] == key)
caption = st.text_input("Caption", value=picked["sentences"][0])
image, target = data.image(picked["png"], f"built-in test image {key}"), key
if upload is not None:  # untrusted bytes: checked once here, then only the decoded image is passed on
    try:
        image, target = data.image(upload.getvalue(), f"upload {upload.name!r}"), "upload"
    except DataError as err:
        st.warning(f"{err}: showing the built-in test image {key} instead", icon=":material/broken_image:")

net = data.or_stop(data.model, settings.tracking_uri, name, version)
method = method_of(net)
image_column, rank_column = st.columns(2)
with image_column:
    if "attention" in method.segmentation_modes:
        overlay, zero = data.attention_overlay(settings.tracking_uri, name, version, image, caption)
        st.image(overlay, caption=f"attention of the caption over the image (zero-slot mass {zero:.2f})",
                 width=320)
    else:
        st.image(image, width=320)
        st.info(f"{method.name} has no text-conditioned attention: the image is shown as is.")
with rank_column:
    ranks = data.caption_ranks(settings.tracking_uri, name, version, settings.data_root, GALLERY, caption,
                               image if target == "upload" else None)
    rank = int(ranks.loc[ranks["image"] == target, "rank"].iloc[0])
    st.metric(f"rank of {target} for the caption", f"{rank} / {len(ranks)}")
    st.caption(f"{method.name}'s own scoring mode ({method.primary_mode}) over {len(ranks)} images (1 = "
               "best; ties count against the image)")
    st.dataframe(ranks.head(10).style.format({"score": "{:.3f}"}), hide_index=True, width="stretch")
