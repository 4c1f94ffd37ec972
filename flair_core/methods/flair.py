"""FLAIR: text-conditioned attention pooling over local image tokens (Xiao et al., CVPR 2025).

Head: `image_post`/`text_post` project tower features to the joint space; `visual_proj` pools an image's
projected patch tokens with a text as the query, giving one image embedding per (image, text) pair.
Loss: w · text-conditioned sigmoid (TCS) + (1 − w) · multi-positive sigmoid (MPS); w = 0.5 is the paper's.
Parameter names equal the authors' released checkpoints (see FLAIR_SPEC §2).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from flair_core import distributed, scores
from flair_core.data.captions import SamplingConfig
from flair_core.data.loader import TextViews
from flair_core.losses import MethodLoss, positive_mask, sigmoid_loss_sum
from flair_core.methods.method import Method
from flair_core.model_config import Frozen, ModelConfig
from flair_core.pooling import TextConditionedPooling
from flair_core.towers import DualTowers, Projection

POOLING_HEADS = 8  # fixed in the original; not part of the model config


class FlairSettings(Frozen):
    tcs_weight: float = Field(0.5, ge=0.0, le=1.0, description="w: weight of TCS; MPS gets 1 - w")


class FlairModel(DualTowers):
    def __init__(self, config: ModelConfig, settings: FlairSettings | None = None):
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
        text_global = self.encode_text_global(texts)  # local text tokens are never used by FLAIR
        return {
            "image_features": self.image_post(image_global),  # (B, D)
            "image_tokens": self.image_post(image_local),  # (B, L, D)
            "text_features": self.text_post(text_global),  # (N, D)
            "logit_scale": self.logit_scale.exp(),
            "logit_bias": self.logit_bias,
        }

    def embed_images(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """-> global features (B, D) and projected patch tokens (B, L, D), which texts pool at scoring
        time."""
        image_global, image_local = self.encode_image(images)
        return {"image_features": self.image_post(image_global), "image_tokens": self.image_post(image_local)}

    def retrieval_scores(self, features: dict[str, torch.Tensor], mode: str, topk: int = 128,
                         dtype: torch.dtype | None = None, budget_mb: float = 512
                         ) -> tuple[torch.Tensor, torch.Tensor]:
        """`flair`: every text pooled over every image; `topk`: global preselection, FLAIR re-scoring."""
        s = features["logit_scale"]
        if mode == "flair":
            f = scores.flair_scores(self.visual_proj, features["image_tokens"], features["text_features"], s,
                                    dtype=dtype, budget_mb=budget_mb)
            return f, f
        if mode == "topk":
            return scores.topk_scores(self.visual_proj, features["image_features"], features["image_tokens"],
                                      features["text_features"], s, topk)
        return super().retrieval_scores(features, mode, topk, dtype, budget_mb)

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

    def get_logits_as_clip(self, images: torch.Tensor,
                           texts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
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


class FlairLoss(MethodLoss):
    """TCS over (B, B+K−1) text sets plus MPS over all B·K texts; returns the weighted terms by name.

    Each term is normalised by its number of texts per image (M = B+K−1 for TCS, N = B·K for MPS), as in the
    original. With W ranks, every rank gathers all ranks' text features (gradients flow back to their owner)
    and builds its images' text sets over the global batch, from offsets drawn identically on every rank; the
    rank's terms are scaled by W so that DDP's gradient average equals single-process training on the global
    batch exactly. (The original instead passes text sets around a ring and adds negatives-only terms, which
    changes the loss with the number of ranks; see docs/deviations.md.)
    """

    settings: FlairSettings

    def __init__(self, settings: FlairSettings, seed: int = 0):
        super().__init__(settings, seed)
        # Offsets must match across ranks, stay fixed over a step's micro-batches and survive a resume:
        # derived from (seed, step count).
        self.register_buffer("steps", torch.zeros((), dtype=torch.long))

    def views(self, sampling: SamplingConfig) -> TextViews:
        return TextViews(sampling)

    def inputs(self, batch: dict) -> tuple[torch.Tensor, ...]:
        return batch["images"], batch["texts"]

    def advance(self) -> None:
        self.steps += 1

    def positive_rate(self, global_batch: int, k: int) -> float:
        # TCS: K positives among B + K − 1 texts per image; MPS alone: K among B·K
        return k / (global_batch + k - 1) if self.settings.tcs_weight > 0 else 1 / global_batch

    def own_parameters(self, head: FlairModel) -> list[nn.Parameter]:
        return list(head.visual_proj.parameters())  # pooling runs in the loss, over the text sets

    def draw_offsets(self, num_images: int, k: int) -> torch.Tensor:
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + int(self.steps))
        return torch.randint(0, k, (num_images, num_images - 1), generator=generator)

    def forward(self, out: dict[str, torch.Tensor], head: FlairModel, offsets: torch.Tensor | None = None
                ) -> dict[str, torch.Tensor]:
        image_features, image_tokens = out["image_features"], out["image_tokens"]
        scale, bias = out["logit_scale"], out["logit_bias"]
        b = image_features.shape[0]
        k, rest = divmod(out["text_features"].shape[0], b)
        if rest or k < 1:
            raise ValueError(f"{out['text_features'].shape[0]} texts for {b} images: expected K per image")
        rank, world = distributed.current()
        texts = distributed.gather_with_grad(out["text_features"])  # (W·B·K, D), row-major over global images
        b_all = b * world
        mine = slice(rank * b, (rank + 1) * b)
        w = self.settings.tcs_weight
        terms: dict[str, torch.Tensor] = {}
        if w > 0:
            if offsets is None:
                offsets = self.draw_offsets(b_all, k)
            indices = text_set_indices(offsets.to(texts.device), k)[mine]  # (B, M) into the global texts
            m = indices.shape[1]
            positive = positive_mask(b_all, m, k, texts.device, step=1)[mine]
            text_sets = texts[indices]  # (B, M, D)
            tcs = self.text_conditioned_sum(head.visual_proj, image_tokens, text_sets, scale, bias, positive)
            terms["tcs"] = w * world * tcs / m
        if w < 1:
            positive = positive_mask(b_all, b_all * k, k, texts.device, step=k)[mine]
            # (B, W·N)
            logits = scale * F.normalize(image_features, dim=-1) @ F.normalize(texts, dim=-1).T + bias
            terms["mps"] = (1 - w) * world * sigmoid_loss_sum(logits, positive) / (b_all * k)
        return terms

    @staticmethod
    def text_conditioned_sum(pooling, image_tokens, text_sets, scale, bias, positive) -> torch.Tensor:
        """Row i of text_sets (B, M, D) pooled over image i's tokens and compared with the same texts."""
        pooled = pooling(text_sets, image_tokens)[0]  # (B, M, D)
        logits = scale * (F.normalize(pooled, dim=-1) * F.normalize(text_sets, dim=-1)).sum(-1) + bias
        return sigmoid_loss_sum(logits, positive)


METHOD = Method("flair", FlairSettings, FlairModel, FlairLoss, retrieval_modes=("flair", "global", "topk"),
                segmentation_modes=("patch", "attention"), baseline=False,
                summary="text-conditioned attention pooling; TCS + MPS sigmoid losses (settings: tcs_weight)")
