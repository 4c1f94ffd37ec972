"""The shared image and text towers: open_clip's ViT and causal text transformer, returning tokens.

Every method (FLAIR, CLIP, FILIP, DreamLIP) subclasses `DualTowers` and adds its own head on top, so all of
them train the very same encoder code. A head provides `image_post`, `text_post` and `logit_scale`; the
scoring defaults here (global embeddings, `global` mode) serve every method, and methods that score local
tokens extend `embed_images`, `embed_texts` and `retrieval_scores`. Parameter names follow open_clip's CLIP
layout (text parts inlined at the top level, no `text.` prefix), which is also the layout of the released
FLAIR checkpoints.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from open_clip.model import CLIPTextCfg, CLIPVisionCfg, _build_text_tower, _build_vision_tower
from open_clip.transformer import text_global_pool
from torch import nn

from flair_core import scores
from flair_core.model_config import ModelConfig

# Texts run through the text tower in up to LENGTH_GROUPS groups of similar length. A group of m texts cut at
# length l costs each layer m*l*(12w^2 + 2lw) multiply-adds (projections and MLP, then causal attention) plus
# a fixed price per call, which small groups do not repay. That price, fitted to forward+backward timings on
# sub-captions of 9-36 tokens (benchmarks/methods.py; tiny-64, 256 texts, 1/2/4/8 equal groups: 0.46/0.37/
# 0.32/0.33 s; micro-32, 128 texts: 0.044/0.037/0.047/0.056 s), is ~4e7 multiply-adds at either width.
LENGTH_GROUPS = 4
GROUP_CALL_MACS = 4e7


def length_groups(lengths: torch.Tensor, width: int, max_groups: int | None = None) -> list[torch.Tensor]:
    """Row indices of `lengths`, sorted by length and cut into at most `max_groups` consecutive groups of
    least total cost (the model above): e.g. DreamLIP's long captions apart from its short sub-captions."""
    max_groups = LENGTH_GROUPS if max_groups is None else max_groups
    order = lengths.argsort()
    values, counts = torch.unique_consecutive(lengths[order], return_counts=True)
    if max_groups <= 1 or len(values) == 1:
        return [order]
    ends = torch.cat([counts.new_zeros(1), counts.cumsum(0)]).double()  # rows before each distinct length
    v = values.double()
    per_row = v * (12 * width**2 + 2 * v * width)  # one row cut at each distinct length
    # cost[i, j]: distinct lengths i..j (rows ends[i] to ends[j + 1]) as one group, cut at length values[j]
    rows = ends[None, 1:] - ends[:-1, None]
    cost = torch.where(rows > 0, rows * per_row[None, :] + GROUP_CALL_MACS, torch.inf)
    # best[g][j]: least cost of the first j distinct lengths in exactly g groups; starts[g - 1][j - 1]: where
    # its last group began
    best = [torch.full((len(ends),), torch.inf, dtype=torch.float64)]
    best[0][0] = 0.0
    starts = []
    for _ in range(max_groups):
        value, start = (best[-1][:-1, None] + cost).min(dim=0)
        best.append(torch.cat([value.new_full((1,), torch.inf), value]))
        starts.append(start)
    groups = min(range(1, max_groups + 1), key=lambda g: float(best[g][-1]))
    cuts, j = [], len(values)
    for g in range(groups, 1, -1):
        j = int(starts[g - 1][j - 1])
        cuts.append(int(ends[j]))
    return list(order.tensor_split(sorted(cuts)))


class DualTowers(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        vision = config.vision_cfg
        vision_cfg = CLIPVisionCfg(
            image_size=vision.image_size,
            patch_size=vision.patch_size,
            width=vision.width,
            layers=vision.layers,
            head_width=vision.head_width,
            mlp_ratio=vision.mlp_ratio,
            pool_type="tok",
            final_ln_after_pool=False,  # ln_post on every token, so local tokens are normalised too
            output_tokens=True,
        )
        self.visual = _build_vision_tower(config.embed_dim, vision_cfg, quick_gelu=config.quick_gelu)
        # Projections belong to each method's head; the tower returns tower-width features.
        self.visual.proj = None

        text = config.text_cfg
        text_cfg = CLIPTextCfg(
            context_length=text.context_length,
            vocab_size=text.vocab_size,
            width=text.width,
            heads=text.heads,
            layers=text.layers,
            mlp_ratio=text.mlp_ratio,
            proj_type="none",
            output_tokens=True,
        )
        text_tower = _build_text_tower(config.embed_dim, text_cfg, quick_gelu=config.quick_gelu)
        self.token_embedding = text_tower.token_embedding
        self.positional_embedding = text_tower.positional_embedding
        self.transformer = text_tower.transformer
        self.ln_final = text_tower.ln_final
        self.register_buffer("attn_mask", text_tower.attn_mask, persistent=False)

    @property
    def context_length(self) -> int:
        return self.config.text_cfg.context_length

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.visual.set_grad_checkpointing(enable)
        self.transformer.grad_checkpointing = enable

    def encode_image(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """images (B, 3, H, W) -> class token (B, Wv), patch tokens (B, L, Wv), both after ln_post."""
        return self.visual(images)

    def encode_text(self, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """ids (..., C) -> EOT state (M, Wt), token states (M, C', Wt), M = prod(leading dims), row-major.

        Each distinct text is encoded once. Texts run in up to LENGTH_GROUPS groups of similar length
        (`length_groups`), each cut after its own longest EOT; C' is the longest text's length. Under the
        causal mask later columns cannot change any earlier state. Sub-captions fill a fraction of the
        77-token context and their lengths vary (built-in data: 9-36 tokens, median 18), so most of one padded
        batch is padding. States past a group's cut are zeros: padding positions, which no method reads (FILIP
        masks id 0).
        """
        return self._encode_text(ids, keep_tokens=True)

    def encode_text_global(self, ids: torch.Tensor) -> torch.Tensor:
        """ids (..., C) -> EOT state (M, Wt): `encode_text` without gathering the token states nobody
        reads."""
        return self._encode_text(ids, keep_tokens=False)[0]

    def _encode_text(self, ids: torch.Tensor, keep_tokens: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
        # A batch's sub-captions repeat (~12 % of the built-in ones: background and count sentences that many
        # images share): every distinct text runs once and its rows share the result.
        ids, rows_of = torch.unique(ids.reshape(-1, ids.shape[-1]), dim=0, return_inverse=True)
        # The EOT id is the largest in the vocabulary, so argmax finds it; the causal mask keeps padding after
        # it from leaking in, so no padding mask is needed.
        lengths = ids.argmax(dim=-1) + 1
        longest = int(lengths.max())
        groups = length_groups(lengths, self.config.text_cfg.width)
        # One lookup for every group: the backward then writes one dense
        # vocabulary-sized gradient, not one per group.
        embedded = self.token_embedding(ids[:, :longest])
        pooled, states = [], []
        for rows in groups:
            used = int(lengths[rows].max())
            x = embedded[rows, :used] + self.positional_embedding[:used]
            x = self.ln_final(self.transformer(x, attn_mask=self.attn_mask[:used, :used]))  # (m, used, Wt)
            pooled.append(text_global_pool(x, ids[rows, :used], pool_type="argmax"))
            if keep_tokens:
                states.append(F.pad(x, (0, 0, 0, longest - used)))
        position = torch.cat(groups).argsort()[rows_of]  # each input row's place in the grouped output
        return torch.cat(pooled)[position], torch.cat(states)[position] if keep_tokens else None

    def embed_images(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """What retrieval keeps per image: images (B, 3, H, W) -> {"image_features": (B, D)}."""
        image_global, _ = self.encode_image(images)
        return {"image_features": self.image_post(image_global)}

    def embed_texts(self, ids: torch.Tensor) -> dict[str, torch.Tensor]:
        """What retrieval keeps per text: ids (T, C) -> {"text_features": (T, D)}."""
        return {"text_features": self.text_post(self.encode_text_global(ids))}

    def retrieval_scores(self, features: dict[str, torch.Tensor], mode: str, topk: int = 128,
                         dtype: torch.dtype | None = None, budget_mb: float = 512
                         ) -> tuple[torch.Tensor, torch.Tensor]:
        """(i2t, t2i) score matrices (I, T) in one scoring mode, from embedded images and texts +
        logit_scale."""
        if mode == "global":
            g = scores.global_scores(features["image_features"], features["text_features"],
                                     features["logit_scale"])
            return g, g
        raise ValueError(f"unknown retrieval mode {mode!r} for {type(self).__name__}")


class Projection(nn.Module):
    """A bias-free linear map stored as one (in, out) matrix named `proj`, as open_clip and FLAIR store it."""

    def __init__(self, in_dim: int, out_dim: int):
        super().__init__()
        self.proj = nn.Parameter(torch.randn(in_dim, out_dim) * in_dim**-0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x @ self.proj
