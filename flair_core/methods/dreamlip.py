"""DreamLIP baseline (Zheng et al., ECCV 2024): language-image pretraining with long captions.

Per image: its long (or raw) caption and K sub-captions sampled from it. Three terms:
* `long`: InfoNCE between images and their long captions (cut to the context);
* `sub_captions`: multi-positive contrastive — an image's K sub-captions are all its positives;
* `grouping`: sub-caption-specific grouping — each sub-caption selects the patches of its image it is most
  similar to (min-max normalised similarities, sparsified below `grouping_threshold`, renormalised), the
  weighted patch average is a grouped image embedding, contrasted with the sub-captions of the batch.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from flair_core import distributed
from flair_core.data.captions import SamplingConfig
from flair_core.data.loader import TextViews
from flair_core.losses import MethodLoss, positive_mask, softmax_contrastive
from flair_core.methods.method import Method
from flair_core.model_config import Frozen, ModelConfig
from flair_core.towers import DualTowers, Projection


class DreamlipSettings(Frozen):
    long_weight: float = Field(1.0, ge=0)
    sub_caption_weight: float = Field(1.0, ge=0)
    grouping_weight: float = Field(1.0, ge=0)
    grouping_threshold: float = Field(0.5, ge=0, lt=1, description="min-max normalised similarity kept")


class DreamlipModel(DualTowers):
    def __init__(self, config: ModelConfig, settings: DreamlipSettings | None = None):
        super().__init__(config)
        self.image_post = Projection(config.vision_cfg.width, config.embed_dim)
        self.text_post = Projection(config.text_cfg.width, config.embed_dim)
        self.logit_scale = nn.Parameter(torch.tensor(config.init_logit_scale))

    def forward(self, images: torch.Tensor, long_texts: torch.Tensor,
                texts: torch.Tensor) -> dict[str, torch.Tensor]:
        """images (B,3,H,W), long_texts (B, C), texts (B, K, C) -> features; sub-captions row-major (B·K,
        D)."""
        image_global, image_local = self.encode_image(images)
        b = images.shape[0]
        # One text-tower pass for both views; trimming adapts to the longer (long caption) rows.
        text_global = self.encode_text_global(torch.cat([long_texts, texts.flatten(0, 1)]))
        text_features = self.text_post(text_global)
        return {
            "image_features": self.image_post(image_global),
            "image_tokens": self.image_post(image_local),  # (B, L, D)
            "long_features": text_features[:b],
            "text_features": text_features[b:],
            "logit_scale": self.logit_scale.exp(),
        }


def grouped_embeddings(image_tokens: torch.Tensor, texts: torch.Tensor, k: int,
                       threshold: float) -> torch.Tensor:
    """image_tokens (B, L, D) normalised, texts (B·K, D) normalised -> one grouped embedding per text (B·K,
    D)."""
    b, _, d = image_tokens.shape
    # Each image's K texts against its own tokens as one batched product: no (B·K, L, D) copy of the tokens
    # (and none in the backward), 5-6x faster than repeating them per text at B 32, K 4.
    sim = texts.view(b, k, d) @ image_tokens.transpose(1, 2)  # (B, K, L)
    low, high = sim.amin(dim=2, keepdim=True), sim.amax(dim=2, keepdim=True)
    weights = (sim - low) / (high - low).clamp(min=1e-6)
    weights = weights * (weights >= threshold)
    weights = weights / weights.sum(dim=2, keepdim=True).clamp(min=1e-6)
    return F.normalize((weights @ image_tokens).flatten(0, 1), dim=-1)


class DreamlipLoss(MethodLoss):
    settings: DreamlipSettings

    def views(self, sampling: SamplingConfig) -> TextViews:
        return TextViews(sampling, long_caption=True)

    def inputs(self, batch: dict) -> tuple[torch.Tensor, ...]:
        return batch["images"], batch["long_texts"], batch["texts"]

    def forward(self, out: dict[str, torch.Tensor], head: nn.Module) -> dict[str, torch.Tensor]:
        rank, world = distributed.current()
        s = self.settings
        scale = out["logit_scale"]
        images = F.normalize(out["image_features"], dim=-1)
        longs = F.normalize(out["long_features"], dim=-1)
        texts = F.normalize(out["text_features"], dim=-1)
        b = images.shape[0]
        k = texts.shape[0] // b
        device = images.device
        all_images = distributed.gather_with_grad(images)
        all_texts = distributed.gather_with_grad(texts)
        terms = {}
        if s.long_weight:
            all_longs = distributed.gather_with_grad(longs)
            diagonal = positive_mask(b, b * world, 1, device, step=1, first_row=rank * b)
            terms["long"] = s.long_weight * (
                softmax_contrastive(scale * images @ all_longs.T, diagonal)
                + softmax_contrastive(scale * longs @ all_images.T, diagonal)) / 2
        if s.sub_caption_weight:
            own_texts = positive_mask(b, b * k * world, k, device, step=k, first_row=rank * b)  # (B, W·B·K)
            own_image = (torch.arange(b * world, device=device)[None, :]
                         == (torch.arange(b * k, device=device) // k + rank * b)[:, None])
            terms["sub_captions"] = s.sub_caption_weight * (
                softmax_contrastive(scale * images @ all_texts.T, own_texts)
                + softmax_contrastive(scale * texts @ all_images.T, own_image)
            ) / 2
        if s.grouping_weight:
            tokens = F.normalize(out["image_tokens"], dim=-1)
            grouped = grouped_embeddings(tokens, texts, k, s.grouping_threshold)  # (B·K, D)
            own = positive_mask(b * k, b * k * world, 1, device, step=1, first_row=rank * b * k)
            terms["grouping"] = s.grouping_weight * softmax_contrastive(scale * grouped @ all_texts.T, own)
        return terms


METHOD = Method("dreamlip", DreamlipSettings, DreamlipModel, DreamlipLoss,
                summary="long caption + sub-captions + sub-caption grouping (settings: *_weight, "
                        "grouping_threshold)")
