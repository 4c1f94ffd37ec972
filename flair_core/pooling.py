"""FLAIR's text-conditioned attention pooling (`visual_proj`).

A text embedding is the query; an image's projected patch tokens are keys and values. LayerNorms on all three,
8-head attention with an extra all-zero key/value slot (an "attend to nothing" sink, `add_zero_attn`), then
the output projection. Parameters live in an `nn.MultiheadAttention` so checkpoint keys match the original,
but the computation is split into query / key-value / attention steps so evaluation can project texts once and
images once instead of once per (image, text) pair.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class TextConditionedPooling(nn.Module):
    def __init__(self, dim: int, heads: int = 8):
        super().__init__()
        if dim % heads:
            raise ValueError(f"embed_dim {dim} must be divisible by the {heads} pooling heads")
        self.heads = heads
        self.ln_q = nn.LayerNorm(dim)
        self.ln_k = nn.LayerNorm(dim)
        self.ln_v = nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, heads, batch_first=True, add_zero_attn=True)

    def _split_heads(self, x: torch.Tensor) -> torch.Tensor:
        *lead, n, d = x.shape
        return x.view(*lead, n, self.heads, d // self.heads).transpose(-3, -2)  # (..., H, n, hd)

    def project_queries(self, texts: torch.Tensor) -> torch.Tensor:
        """texts (..., N, D) -> per-head queries (..., H, N, hd)."""
        w_q = self.attn.in_proj_weight.chunk(3)[0]
        b_q = self.attn.in_proj_bias.chunk(3)[0]
        return self._split_heads(F.linear(self.ln_q(texts), w_q, b_q))

    def project_keys_values(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """tokens (B, L, D) -> keys, values (B, H, L+1, hd), the last slot all zeros (biases not added)."""
        _, w_k, w_v = self.attn.in_proj_weight.chunk(3)
        _, b_k, b_v = self.attn.in_proj_bias.chunk(3)
        k = self._split_heads(F.linear(self.ln_k(tokens), w_k, b_k))
        v = self._split_heads(F.linear(self.ln_v(tokens), w_v, b_v))
        return F.pad(k, (0, 0, 0, 1)), F.pad(v, (0, 0, 0, 1))

    def attend(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, need_weights: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """q (B, H, N, hd), k/v (B, H, L+1, hd) -> pooled (B, N, D) and, if asked, weights (B, H, N, L+1)."""
        if need_weights:
            weights = torch.softmax(q @ k.transpose(-1, -2) * q.shape[-1] ** -0.5, dim=-1)
            out = weights @ v
        else:
            weights = None
            out = F.scaled_dot_product_attention(q, k, v)
        out = out.transpose(-3, -2).flatten(-2)  # (B, N, D)
        return self.attn.out_proj(out), weights

    def forward(
        self, texts: torch.Tensor, tokens: torch.Tensor, need_weights: bool = False,
        average_heads: bool = True
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """texts (B, N, D) pooled over tokens (B, L, D): row n of image b uses text n as its query.

        Returns pooled (B, N, D) and attention weights — (B, N, L+1) head-averaged or (B, H, N, L+1) — whose
        last column is the zero slot.
        """
        k, v = self.project_keys_values(tokens)
        out, weights = self.attend(self.project_queries(texts), k, v, need_weights)
        if weights is not None and average_heads:
            weights = weights.mean(dim=1)
        return out, weights
