"""FILIP baseline (Yao et al., 2022): token-wise late interaction.

The image→text similarity is the mean over image tokens of each token's best match among the text's
non-padding tokens; text→image the mean over text tokens of their best image-token match. Contrastive loss
in both directions over the gathered batch. Efficiency options from the paper: a reduced embedding dim
(`embed_dim`, 256 in the paper), keeping only a fraction of image tokens before gathering (`token_fraction`,
25%), and half-precision similarity (`similarity_dtype`).
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from flair_core import distributed, scores
from flair_core.data.captions import SamplingConfig
from flair_core.data.loader import TextViews
from flair_core.losses import MethodLoss, positive_mask, softmax_contrastive
from flair_core.methods.method import Method
from flair_core.model_config import Frozen, ModelConfig
from flair_core.towers import DualTowers, Projection

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class FilipSettings(Frozen):
    embed_dim: int | None = Field(None, gt=0, description="token embedding dim; None = the model's embed_dim")
    token_fraction: float = Field(1.0, gt=0.0, le=1.0, description="image tokens kept before gathering")
    similarity_dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    text: Literal["sub_caption", "long_caption"] = "sub_caption"


class FilipModel(DualTowers):
    def __init__(self, config: ModelConfig, settings: FilipSettings | None = None):
        super().__init__(config)
        dim = (settings.embed_dim if settings else None) or config.embed_dim
        self.image_post = Projection(config.vision_cfg.width, dim)
        self.text_post = Projection(config.text_cfg.width, dim)
        self.logit_scale = nn.Parameter(torch.tensor(config.init_logit_scale))

    def forward(self, images: torch.Tensor, texts: torch.Tensor) -> dict[str, torch.Tensor]:
        """-> normalised image tokens (B, L, d), class token (B, d), text tokens (N, C', d) and their mask."""
        image_global, image_local = self.encode_image(images)
        _, text_local = self.encode_text(texts)
        # Back to the full context so micro-batches and ranks (trimmed differently) can be concatenated.
        text_local = F.pad(text_local, (0, 0, 0, texts.shape[1] - text_local.shape[1]))
        return {
            "image_tokens": F.normalize(self.image_post(image_local), dim=-1),
            "image_features": F.normalize(self.image_post(image_global), dim=-1),
            "text_tokens": F.normalize(self.text_post(text_local), dim=-1),  # (N, C, d)
            "text_mask": texts != 0,  # (N, C): non-padding tokens
            "logit_scale": self.logit_scale.exp(),
        }

    def embed_images(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """-> normalised image tokens (B, L, d) for late interaction, global features (B, d)."""
        image_global, image_local = self.encode_image(images)
        return {"image_tokens": F.normalize(self.image_post(image_local), dim=-1),
                "image_features": self.image_post(image_global)}

    def embed_texts(self, ids: torch.Tensor) -> dict[str, torch.Tensor]:
        """-> global features (T, d), normalised tokens (T, C, d) padded to the context, mask (T, C)."""
        text_global, text_local = self.encode_text(ids)
        text_local = F.pad(text_local, (0, 0, 0, ids.shape[1] - text_local.shape[1]))
        return {"text_features": self.text_post(text_global),
                "text_tokens": F.normalize(self.text_post(text_local), dim=-1), "text_mask": ids != 0}

    def retrieval_scores(self, features: dict[str, torch.Tensor], mode: str, topk: int = 128,
                         dtype: torch.dtype | None = None, budget_mb: float = 512
                         ) -> tuple[torch.Tensor, torch.Tensor]:
        """`filip`: token-wise late interaction over all pairs."""
        if mode == "filip":
            return scores.filip_scores(features["image_tokens"], features["text_tokens"],
                                       features["text_mask"], features["logit_scale"], dtype, budget_mb)
        return super().retrieval_scores(features, mode, topk, dtype, budget_mb)


def select_tokens(tokens: torch.Tensor, anchor: torch.Tensor, fraction: float) -> torch.Tensor:
    """Keep the ceil(fraction·L) tokens most similar to the image's class token: (B, L, d) -> (B, L', d)."""
    keep = math.ceil(fraction * tokens.shape[1])
    if keep >= tokens.shape[1]:
        return tokens
    order = (tokens @ anchor.unsqueeze(-1)).squeeze(-1).topk(keep, dim=1).indices  # (B, L')
    return tokens.gather(1, order.unsqueeze(-1).expand(-1, -1, tokens.shape[-1]))


def token_similarities(image_tokens, text_tokens, text_mask) -> tuple[torch.Tensor, torch.Tensor]:
    """image_tokens (I, L, d), text_tokens (T, C, d), text_mask (T, C) -> i2t (I, T), t2i (T, I)."""
    sim = torch.einsum("ild,tcd->itlc", image_tokens, text_tokens)  # (I, T, L, C)
    masked = sim.masked_fill(~text_mask[None, :, None, :], float("-inf"))
    i2t = masked.amax(dim=3).float().mean(dim=2)  # each image token's best text token, averaged
    best_image = sim.amax(dim=2).float()  # (I, T, C): each text token's best image token
    counts = text_mask.sum(dim=1).clamp(min=1)
    t2i = (best_image * text_mask[None]).sum(dim=2) / counts[None]
    return i2t, t2i.T


class FilipLoss(MethodLoss):
    settings: FilipSettings

    def views(self, sampling: SamplingConfig) -> TextViews:
        return TextViews(sampling.model_copy(update={"k": 1}),
                         long_caption=self.settings.text == "long_caption")

    def inputs(self, batch: dict) -> tuple[torch.Tensor, ...]:
        texts = batch["long_texts"] if self.settings.text == "long_caption" else batch["texts"][:, 0]
        return batch["images"], texts

    def forward(self, out: dict[str, torch.Tensor], head: nn.Module) -> dict[str, torch.Tensor]:
        rank, world = distributed.current()
        dtype = DTYPES[self.settings.similarity_dtype]
        images = select_tokens(out["image_tokens"], out["image_features"], self.settings.token_fraction)
        texts, mask = out["text_tokens"], out["text_mask"]
        all_images = distributed.gather_with_grad(images.to(dtype))
        all_texts = distributed.gather_with_grad(texts.to(dtype))
        all_mask = distributed.gather_with_grad(mask.float()).bool() if world > 1 else mask
        # Text tokens come first and padding after: columns past the batch's longest text
        # are masked out of both directions, so the similarities skip them (sub-captions
        # fill a quarter of the 77-token context).
        used = int(all_mask.any(dim=0).nonzero().max()) + 1 if all_mask.any() else 1
        all_texts, all_mask, texts, mask = (all_texts[:, :used], all_mask[:, :used], texts[:, :used],
                                            mask[:, :used])
        b = images.shape[0]
        if world == 1:  # both directions read the same (B, B, L, C) similarities: compute them once
            i2t, t2i = token_similarities(images.to(dtype), texts.to(dtype), mask)
        else:
            i2t, _ = token_similarities(images.to(dtype), all_texts, all_mask)  # (B, W·B)
            _, t2i = token_similarities(all_images, texts.to(dtype), mask)  # (B texts, W·B images)
        positive = positive_mask(b, b * world, 1, images.device, step=1, first_row=rank * b)
        scale = out["logit_scale"]
        loss = (softmax_contrastive(scale * i2t, positive) + softmax_contrastive(scale * t2i, positive)) / 2
        return {"contrastive": loss}


METHOD = Method("filip", FilipSettings, FilipModel, FilipLoss, retrieval_modes=("filip", "global"),
                summary="token-wise late interaction (settings: embed_dim, token_fraction, similarity_dtype, "
                        "text)")
