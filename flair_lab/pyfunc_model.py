"""The MLflow pyfunc form of a trained model: score images against captions, offline.

Input: a DataFrame with `image` (PNG/JPEG bytes, or base64 of them) and `caption` columns, one pair per row.
Output: one score per row — s·cos in the method's own scoring (FLAIR: text-conditioned pooling; FILIP:
token-wise; CLIP/DreamLIP: global embeddings).
"""

from __future__ import annotations

import base64
import io

import mlflow.pyfunc
import pandas as pd


def _image_bytes(value) -> bytes:
    if isinstance(value, bytes | bytearray):
        return bytes(value)
    return base64.b64decode(value)


class ImageTextScorer(mlflow.pyfunc.PythonModel):
    def load_context(self, context) -> None:
        from flair_core import load_trained

        self.model = load_trained(context.artifacts["checkpoint"])

    def predict(self, context, model_input: pd.DataFrame, params=None) -> pd.Series:
        from PIL import Image

        from flair_core import score_pairs

        images = [Image.open(io.BytesIO(_image_bytes(v))).convert("RGB") for v in model_input["image"]]
        captions = [str(c) for c in model_input["caption"]]
        return pd.Series(score_pairs(self.model, images, captions).tolist(), name="score")
