"""FLAIR: text-conditioned attention pooling over local image tokens (Xiao et al., CVPR 2025).

Head: `image_post`/`text_post` project tower features to the joint space; `visual_proj` pools an image's
projected patch tokens with a text as the query, giving one image embedding per (image, text) pair.
Loss: w · text-conditioned sigmoid (TCS) + (1 − w) · multi-positive sigmoid (MPS); w = 0.5 is the paper's.
Parameter names equal the authors' released checkpoints (see FLAIR_SPEC §2).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from flair_core.config import ModelConfig
from flair_core.pooling import TextConditionedPooling
from flair_core.towers import DualTowers, Projection

POOLING_HEADS = 8  # fixed in the original; not part of the model config


class FlairSettings(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    tcs_weight: float = Field(0.5, ge=0.0, le=1.0, description="w: weight of TCS; MPS gets 1 - w")


class FlairModel(DualTowers):
    def __init__(self, config: ModelConfig):
        super().__init__(config)
        dim = config.embed_dim
        self.image_post = Projection(config.vision_cfg.width, dim)
        self.text_post = Projection(config.text_cfg.width, dim)
        self.visual_proj = TextConditionedPooling(dim, heads=POOLING_HEADS)
        self.logit_scale = nn.Parameter(torch.tensor(config.init_logit_scale))
        bias = 0.0 if config.init_logit_bias is None else config.init_logit_bias
        self.logit_bias = nn.Parameter(torch.tensor(float(bias)))

    def forward(self, images: torch.Tensor, texts: torch.Tensor) -> dict[str, torch.Tensor]:
        """images (B, 3, H, W), texts (B, K, C) or (N, C) -> projected features and the two scalars."""
        image_global, image_local = self.encode_image(images)
        text_global, _ = self.encode_text(texts)  # local text tokens are never used by FLAIR
        return {
            "image_features": self.image_post(image_global),  # (B, D)
            "image_tokens": self.image_post(image_local),  # (B, L, D)
            "text_features": self.text_post(text_global),  # (N, D)
            "logit_scale": self.logit_scale.exp(),
            "logit_bias": self.logit_bias,
        }

    def pool(self, texts: torch.Tensor, image_tokens: torch.Tensor) -> torch.Tensor:
        """Every text against every image: texts (N, D), image_tokens (B, L, D) -> (B, N, D)."""
        queries = texts.unsqueeze(0).expand(image_tokens.shape[0], -1, -1)
        return self.visual_proj(queries, image_tokens)[0]

    def get_logits(self, images: torch.Tensor, texts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """FLAIR logits s·cos(pool(t_n; X_i), t_n) + b: (B, N) per image and its transpose."""
        out = self(images, texts)
        pooled = self.pool(out["text_features"], out["image_tokens"])
        cos = (F.normalize(pooled, dim=-1) * F.normalize(out["text_features"], dim=-1)).sum(-1)
        per_image = out["logit_scale"] * cos + out["logit_bias"]
        return per_image, per_image.T

    def get_logits_as_clip(self, images: torch.Tensor, texts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Global matching s·cos(g_i, t_n), without bias as in the original: (B, N) and its transpose."""
        out = self(images, texts)
        per_image = out["logit_scale"] * F.normalize(out["image_features"], dim=-1) @ F.normalize(
            out["text_features"], dim=-1
        ).T
        return per_image, per_image.T


def text_set_indices(offsets: torch.Tensor, k: int) -> torch.Tensor:
    """Per image: its own K captions plus one caption of every other image, sorted ascending.

    offsets (B, B-1): for image i, which caption (0..K-1) of the j-th other image (others in increasing
    order) to take. Returns (B, B+K-1) indices into the row-major (B·K) texts; image i's own captions sit in
    columns i..i+K-1 because exactly i foreign captions have smaller indices.
    """
    b = offsets.shape[0]
    device = offsets.device
    rows = torch.arange(b, device=device)[:, None]
    own = rows * k + torch.arange(k, device=device)  # (B, K)
    cols = torch.arange(b - 1, device=device)[None, :]
    others = cols + (cols >= rows).long()  # (B, B-1): other image ids, skipping i
    return torch.cat([own, others * k + offsets], dim=1).sort(dim=1).values


def sigmoid_loss_sum(logits: torch.Tensor, positive: torch.Tensor) -> torch.Tensor:
    """−Σ log σ(y·z) with y = +1 where `positive` else −1."""
    signs = positive.to(logits.dtype) * 2 - 1
    return -F.logsigmoid(signs * logits).sum()


class FlairLoss(nn.Module):
    """TCS over (B, B+K−1) text sets plus MPS over all B·K texts; returns the weighted terms by name.

    Each term is normalised by its number of texts per image (M = B+K−1 for TCS, N = B·K for MPS), as in the
    original, so that values are comparable with its logs.
    """

    def __init__(self, settings: FlairSettings):
        super().__init__()
        self.settings = settings

    def forward(
        self,
        out: dict[str, torch.Tensor],
        pooling: TextConditionedPooling,
        k: int,
        offsets: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        image_features, image_tokens, texts = out["image_features"], out["image_tokens"], out["text_features"]
        scale, bias = out["logit_scale"], out["logit_bias"]
        b = image_features.shape[0]
        if texts.shape[0] != b * k:
            raise ValueError(f"expected {b}×{k} texts for {b} images at K={k}, got {texts.shape[0]}")
        w = self.settings.tcs_weight
        terms: dict[str, torch.Tensor] = {}
        if w > 0:
            if offsets is None:
                offsets = torch.randint(0, k, (b, b - 1), device=texts.device)
            text_sets = texts[text_set_indices(offsets, k)]  # (B, M, D)
            m = text_sets.shape[1]
            positive = _band(b, m, k, texts.device, step=1)
            terms["tcs"] = w * self.text_conditioned_sum(pooling, image_tokens, text_sets, scale, bias, positive) / m
        if w < 1:
            positive = _band(b, b * k, k, texts.device, step=k)
            logits = scale * F.normalize(image_features, dim=-1) @ F.normalize(texts, dim=-1).T + bias  # (B, N)
            terms["mps"] = (1 - w) * sigmoid_loss_sum(logits, positive) / (b * k)
        return terms

    @staticmethod
    def text_conditioned_sum(pooling, image_tokens, text_sets, scale, bias, positive) -> torch.Tensor:
        """Row i of text_sets (B, M, D) pooled over image i's tokens and compared with the same texts."""
        pooled = pooling(text_sets, image_tokens)[0]  # (B, M, D)
        logits = scale * (F.normalize(pooled, dim=-1) * F.normalize(text_sets, dim=-1)).sum(-1) + bias
        return sigmoid_loss_sum(logits, positive)


def _band(rows: int, cols: int, k: int, device: torch.device, step: int) -> torch.Tensor:
    """Boolean (rows, cols): True where step·i <= col < step·i + k."""
    start = torch.arange(rows, device=device)[:, None] * step
    col = torch.arange(cols, device=device)[None, :]
    return (col >= start) & (col < start + k)
