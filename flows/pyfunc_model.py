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
        from flair_core import get_tokenizer, get_transform
        from flair_core.training.checkpoints import load_trained

        self.model, self.method = load_trained(context.artifacts["checkpoint"])
        self.tokenizer = get_tokenizer(self.model.config)
        self.transform = get_transform(self.model.config, train=False)

    def predict(self, context, model_input: pd.DataFrame, params=None) -> pd.Series:
        import torch
        from PIL import Image

        from flair_core.evaluation.retrieval import PRIMARY_MODE, RetrievalTask, encode, score

        images = [Image.open(io.BytesIO(_image_bytes(v))).convert("RGB") for v in model_input["image"]]
        captions = [str(c) for c in model_input["caption"]]
        n = len(captions)
        task = RetrievalTask("predict", captions, torch.eye(n, dtype=torch.bool), None, lambda: iter(images), n)
        features = encode(self.model, self.tokenizer, self.transform, task, self.method)
        i2t, _ = score(self.model, features, PRIMARY_MODE[self.method], topk=1)
        return pd.Series(i2t.diagonal().tolist(), name="score")
