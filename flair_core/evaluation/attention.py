"""FLAIR's text-conditioned attention maps: where `visual_proj` looks in an image for a given caption.

Weights come from the pooling block with heads averaged. The zero slot (`add_zero_attn`, "attend to
nothing") is reported separately and the patch weights are renormalised to sum to 1 — the original drops
the slot without renormalising and hard-codes a 14×14 grid (FLAIR_SPEC §7.8, §8.14); here any square grid
works. Rendering uses PIL/numpy only (the library must not need matplotlib).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from flair_core.pooling import TextConditionedPooling

# Overlay colour ramp: low attention -> red, high -> yellow; opacity grows with attention up to MAX_ALPHA.
LOW, HIGH = np.array([255, 0, 0], np.float32), np.array([255, 230, 0], np.float32)
MAX_ALPHA = 0.7


def require_pooling(model) -> TextConditionedPooling:
    if getattr(model, "visual_proj", None) is None:
        raise ValueError(f"{type(model).__name__} has no text-conditioned pooling (visual_proj): attention "
                         f"maps need a FLAIR model")
    return model.visual_proj


def to_grid(x: torch.Tensor) -> torch.Tensor:
    """(..., L) -> (..., g, g) for L = g² patches in row-major order, as the ViT flattens them."""
    g = math.isqrt(x.shape[-1])
    if g * g != x.shape[-1]:
        raise ValueError(f"{x.shape[-1]} patches do not form a square grid")
    return x.reshape(*x.shape[:-1], g, g)


def patch_attention(pooling: TextConditionedPooling, queries: torch.Tensor, tokens: torch.Tensor
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """queries (N, D) attending over each image's tokens (B, L, D), as `visual_proj` does.

    Returns the head-averaged patch weights renormalised over patches (B, N, L) — rows sum to 1 — and the
    head-averaged zero-slot mass (B, N) that was removed.
    """
    queries = queries.unsqueeze(0).expand(tokens.shape[0], -1, -1)  # (B, N, D)
    _, weights = pooling(queries, tokens, need_weights=True, average_heads=True)  # (B, N, L+1)
    zero, patches = weights[..., -1], weights[..., :-1]
    # The zero slot never takes everything (its logit is 0, a patch's is finite), so the sum is > 0.
    return patches / patches.sum(dim=-1, keepdim=True).clamp(min=torch.finfo(patches.dtype).tiny), zero


@torch.no_grad()
def attention_maps(model, tokenizer: Callable, image_tensor: torch.Tensor, captions: list[str]
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """One transformed image (3, H, W) and N captions -> maps (N, g, g) summing to 1, zero-slot mass (N,).

    Queries are the raw `text_post(encode_text_global(caption))`, as the original visualisation uses them.
    """
    pooling = require_pooling(model)
    if not captions:
        raise ValueError("no captions to map")
    model.eval()
    device = next(model.parameters()).device
    tokens = model.image_post(model.encode_image(image_tensor[None].to(device))[1])  # (1, L, D)
    queries = model.text_post(model.encode_text_global(tokenizer(list(captions)).to(device)))  # (N, D)
    weights, zero = patch_attention(pooling, queries, tokens)
    return to_grid(weights[0].float().cpu()), zero[0].float().cpu()


def center_square(image: Image.Image) -> Image.Image:
    """The centre square crop: what the eval transform (shortest-side resize + centre crop) shows the
    model."""
    w, h = image.size
    s = min(w, h)
    left, top = (w - s) // 2, (h - s) // 2
    return image.crop((left, top, left + s, top + s))


def overlay(image: Image.Image, attention: torch.Tensor) -> Image.Image:
    """The attention map (g, g), scaled by its max and upsampled bilinearly, as a coloured alpha layer
    (RGBA)."""
    base = center_square(image).convert("RGBA")
    size = base.size[::-1]  # (H, W)
    grid = attention.detach().float().cpu().clamp(min=0)
    grid = grid / grid.max().clamp(min=torch.finfo(grid.dtype).tiny)
    up = F.interpolate(grid[None, None], size=size, mode="bilinear", align_corners=False)[0, 0]
    a = up.clamp(0, 1).numpy()[..., None]  # (H, W, 1)
    rgb = LOW + (HIGH - LOW) * a
    layer = np.concatenate([rgb, 255 * MAX_ALPHA * a], axis=-1).round().astype(np.uint8)
    return Image.alpha_composite(base, Image.fromarray(layer, "RGBA"))


def render_attention_png(image: Image.Image, attention: torch.Tensor, path: str | Path) -> Path:
    """Write the overlay of `attention` (g, g) on the image's centre square to `path` (PNG); returns it.

    Pass the original photo: its centre square is what the eval transform crops, so the map lines up.
    """
    if attention.ndim != 2:
        raise ValueError(f"expected one (g, g) attention map, got shape {tuple(attention.shape)}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    overlay(image, attention).convert("RGB").save(path, format="PNG")
    return path
