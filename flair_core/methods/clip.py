"""CLIP baseline: global embeddings, InfoNCE over the gathered batch (or SigLIP's sigmoid loss).

Its text per image is a setting: one sampled sub-caption, or the whole long caption cut to the context —
two different baselines (the long-caption one is much stronger at long-caption retrieval).
Head parameter names equal FLAIR's (`image_post.proj`, `text_post.proj`), so one can initialise the other.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from flair_core import distributed
from flair_core.data.captions import SamplingConfig
from flair_core.data.loader import TextViews
from flair_core.losses import MethodLoss, positive_mask, sigmoid_loss_sum, softmax_contrastive
from flair_core.methods.method import Method
from flair_core.model_config import Frozen, ModelConfig
from flair_core.towers import DualTowers, Projection


class ClipSettings(Frozen):
    loss: Literal["softmax", "sigmoid"] = "softmax"
    text: Literal["sub_caption", "long_caption"] = "sub_caption"


class ClipModel(DualTowers):
    def __init__(self, config: ModelConfig, settings: ClipSettings | None = None):
        super().__init__(config)
        self.image_post = Projection(config.vision_cfg.width, config.embed_dim)
        self.text_post = Projection(config.text_cfg.width, config.embed_dim)
        self.logit_scale = nn.Parameter(torch.tensor(config.init_logit_scale))
        # SigLIP's bias exists only with the sigmoid loss: an unused parameter would stall DDP.
        self.logit_bias = None
        if settings is not None and settings.loss == "sigmoid":
            bias = -10.0 if config.init_logit_bias is None else config.init_logit_bias
            self.logit_bias = nn.Parameter(torch.tensor(float(bias)))

    def forward(self, images: torch.Tensor, texts: torch.Tensor) -> dict[str, torch.Tensor]:
        """images (B, 3, H, W), texts (N, C) -> global features (B, D), (N, D) and the scalars."""
        image_global, _ = self.encode_image(images)
        text_global = self.encode_text_global(texts)
        return {
            "image_features": self.image_post(image_global),
            "text_features": self.text_post(text_global),
            "logit_scale": self.logit_scale.exp(),
            **({"logit_bias": self.logit_bias} if self.logit_bias is not None else {}),
        }


class ClipLoss(MethodLoss):
    settings: ClipSettings

    def views(self, sampling: SamplingConfig) -> TextViews:
        one = sampling.model_copy(update={"k": 1})
        return TextViews(one, long_caption=self.settings.text == "long_caption")

    def positive_rate(self, global_batch: int, k: int) -> float | None:
        return 1 / global_batch if self.settings.loss == "sigmoid" else None

    def inputs(self, batch: dict) -> tuple[torch.Tensor, ...]:
        texts = batch["long_texts"] if self.settings.text == "long_caption" else batch["texts"][:, 0]
        return batch["images"], texts

    def forward(self, out: dict[str, torch.Tensor], head: nn.Module) -> dict[str, torch.Tensor]:
        rank, world = distributed.current()
        images = F.normalize(out["image_features"], dim=-1)
        texts = F.normalize(out["text_features"], dim=-1)
        b = images.shape[0]
        all_images, all_texts = distributed.gather_with_grad(images), distributed.gather_with_grad(texts)
        scale = out["logit_scale"]
        # (B, W·B) diagonal
        positive = positive_mask(b, b * world, 1, images.device, step=1, first_row=rank * b)
        if self.settings.loss == "sigmoid":
            logits = scale * images @ all_texts.T + out["logit_bias"]
            return {"sigmoid": world * sigmoid_loss_sum(logits, positive) / (b * world)}
        per_image = softmax_contrastive(scale * images @ all_texts.T, positive)
        per_text = softmax_contrastive(scale * texts @ all_images.T, positive)
        return {"contrastive": (per_image + per_text) / 2}


METHOD = Method("clip", ClipSettings, ClipModel, ClipLoss,
                summary="global embeddings; InfoNCE or SigLIP loss (settings: loss, text)")
