"""Image–text score matrices for retrieval: global, FLAIR (all pairs), symmetric top-k, FILIP token-wise.

Scores are s·cos without bias, as the original evaluates. The FLAIR mode projects every text query once and
every image's keys/values once, then pools image batches against text chunks sized to a memory budget, in
the precision asked for; results go into one preallocated matrix (no per-image allocations, see
FLAIR_SPEC §8.16–8.21).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from flair_core.pooling import TextConditionedPooling


def global_scores(image_features: torch.Tensor, text_features: torch.Tensor,
                  scale: torch.Tensor) -> torch.Tensor:
    """(I, D), (T, D) -> s·cos (I, T)."""
    return scale * F.normalize(image_features, dim=-1) @ F.normalize(text_features, dim=-1).T


def chunk_sizes(num_images: int, num_texts: int, dim: int, heads: int, slots: int, itemsize: int,
                budget_mb: float) -> tuple[int, int]:
    """(images per batch, texts per chunk) so a chunk's working set stays under the budget.

    Per (image, text) pair the chunk holds the expanded query, attention output, projected output and one
    temporary (4·D values) plus attention probabilities (H·(L+1)) if the kernel materialises them.
    """
    per_pair = (4 * dim + heads * slots) * itemsize
    pairs = max(1, int(budget_mb * 2**20 // per_pair))
    # Measured on 2 CPU cores at D = 512, L = 196: 4 images × ~1k texts keeps the chunk in cache and the
    # GEMMs large (fp32 within a few % of plain matmul); bigger chunks only add memory traffic.
    images = max(1, min(num_images, 4, pairs))
    texts = max(1, min(num_texts, 1024, pairs // images))
    return images, texts


@torch.no_grad()
def flair_scores(pooling: TextConditionedPooling, image_tokens: torch.Tensor, text_features: torch.Tensor,
                 scale: torch.Tensor, dtype: torch.dtype | None = None,
                 budget_mb: float = 512) -> torch.Tensor:
    """Every text pooled over every image: image_tokens (I, L, D), text_features (T, D) -> s·cos (I, T)
    fp32."""
    dtype = dtype or text_features.dtype
    pooling_dtype = next(pooling.parameters()).dtype
    with torch.autocast(image_tokens.device.type, dtype=dtype, enabled=dtype != pooling_dtype):
        queries = pooling.project_queries(text_features).to(dtype)  # (H, T, hd), once for all images
        # CPU SDPA runs bf16 no faster than fp32 (measured 12.6 vs 13.3 ms on one chunk), while bf16 GEMMs run
        # ~2.4x faster: in bf16, attention is two GEMMs around exp, its scale folded into the queries once.
        explicit = dtype == torch.bfloat16
        if explicit:
            queries = queries * queries.shape[-1] ** -0.5
        targets = F.normalize(text_features.float(), dim=-1).to(dtype)  # (T, D)
        n_images, n_texts = image_tokens.shape[0], text_features.shape[0]
        heads, _, _ = queries.shape
        b, n = chunk_sizes(n_images, n_texts, text_features.shape[1], heads, image_tokens.shape[1] + 1,
                           torch.finfo(dtype).bits // 8, budget_mb)
        scores = torch.empty(n_images, n_texts, dtype=torch.float32)
        w_out, b_out = pooling.attn.out_proj.weight.to(dtype), pooling.attn.out_proj.bias.to(dtype)
        for i in range(0, n_images, b):
            keys, values = (x.to(dtype) for x in pooling.project_keys_values(image_tokens[i : i + b]))
            rows = keys.shape[0]
            for j in range(0, n_texts, n):
                q = queries[None, :, j : j + n].expand(rows, -1, -1, -1)  # (b, H, n, hd)
                pooled = explicit_attention(q, keys, values) if explicit else F.scaled_dot_product_attention(
                    q, keys, values)  # (b, H, n, hd)
                pooled = F.linear(pooled.transpose(1, 2).flatten(2), w_out, b_out)  # (b, n, D)
                cos = ((pooled * targets[j : j + n]).sum(-1).float()
                       / pooled.float().norm(dim=-1).clamp(min=1e-12))
                scores[i : i + rows, j : j + n] = cos.cpu()
    return scale.float().cpu() * scores


def explicit_attention(q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """Attention of pre-scaled queries over keys whose last slot is FLAIR's zero key, normalised after the
    weighted sum: a softmax without its max pass (bf16, 4 images x 512 texts: 3.5 instead of 4.2 ms).

    Safe because every row holds the zero key's logit 0: its sum of exps is at least 1, so nothing underflows
    to 0/0. A logit above ~88 overflows; such a chunk is redone with the max-subtracting softmax.
    """
    weights = (q @ keys.transpose(-1, -2)).exp_()
    sums = weights.sum(dim=-1, keepdim=True)
    if torch.isfinite(sums).all():
        return (weights @ values) / sums
    return torch.softmax(q @ keys.transpose(-1, -2), dim=-1) @ values


@torch.no_grad()
def flair_pair_scores(pooling: TextConditionedPooling, image_tokens: torch.Tensor,
                      text_features: torch.Tensor, scale: torch.Tensor, pairs: torch.Tensor) -> torch.Tensor:
    """FLAIR scores of the selected pairs only: pairs bool (I, T) -> (I, T) fp32, NaN where not selected."""
    scores = torch.full(pairs.shape, float("nan"))
    targets = F.normalize(text_features, dim=-1)
    for i in range(pairs.shape[0]):
        texts = pairs[i].nonzero().flatten()
        if len(texts):
            pooled, _ = pooling(text_features[texts][None], image_tokens[i : i + 1])  # (1, n, D)
            cos = (F.normalize(pooled[0], dim=-1) * targets[texts]).sum(-1)
            scores[i, texts] = (scale * cos).float().cpu()
    return scores


def topk_mask(scores: torch.Tensor, k: int, dim: int) -> torch.Tensor:
    """bool mask of each row's (dim=1) or column's (dim=0) k best entries."""
    if k > scores.shape[dim]:
        raise ValueError(f"top-k {k} is larger than the gallery of {scores.shape[dim]}")
    mask = torch.zeros_like(scores, dtype=torch.bool)
    return mask.scatter_(dim, scores.topk(k, dim=dim).indices, True)


# Re-scored items rank above every item that was not: scores are s·cos with s <= 100.
RESCORED_OFFSET = 1e4


@torch.no_grad()
def topk_scores(pooling: TextConditionedPooling, image_features: torch.Tensor, image_tokens: torch.Tensor,
                text_features: torch.Tensor, scale: torch.Tensor,
                k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric top-k: global preselection of each image's k texts AND each text's k images, FLAIR
    re-scoring of the union. Returns (i2t, t2i) matrices: within a direction the preselected items are ranked
    by their FLAIR score, all others after them by their global score — so neither direction depends on
    filler values or on whether a pair made the other direction's list (the original's bug, §8.3)."""
    coarse = global_scores(image_features, text_features, scale).float().cpu()
    per_image, per_text = topk_mask(coarse, k, dim=1), topk_mask(coarse, k, dim=0)
    fine = flair_pair_scores(pooling, image_tokens, text_features, scale, per_image | per_text)
    i2t = torch.where(per_image, fine + RESCORED_OFFSET, coarse)
    t2i = torch.where(per_text, fine + RESCORED_OFFSET, coarse)
    return i2t, t2i


@torch.no_grad()
def filip_scores(image_tokens: torch.Tensor, text_tokens: torch.Tensor, text_mask: torch.Tensor,
                 scale: torch.Tensor, dtype: torch.dtype | None = None, budget_mb: float = 512
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """FILIP late interaction over all pairs: image_tokens (I, L, d), text_tokens (T, C, d), text_mask (T, C)
    -> (i2t, t2i) each (I, T) fp32, as `methods.filip.token_similarities` defines them.

    Three things keep it near the matmul limit (benchmarks/retrieval.py): texts go in chunks sorted by length,
    each cut to its longest text (captions fill a fraction of the 77-token context, so the padding's work is
    never done); padding is pushed out of every max by one extra dimension in the GEMM itself (0 for a real
    token, -1e4 for padding, against a constant 1 on the image side) instead of a masking pass; and blocks of
    images × texts are sized so that their similarities stay in cache while the two max-reductions read
    them."""
    dtype = dtype or text_tokens.dtype
    n_images, n_tokens, dim = image_tokens.shape
    ones = torch.ones(n_images, n_tokens, 1, dtype=dtype, device=image_tokens.device)
    images = torch.cat([image_tokens.to(dtype), ones], dim=2)  # (I, L, d + 1)
    padding = (~text_mask).to(dtype)[..., None] * -1e4  # (T, C, 1)
    texts = torch.cat([text_tokens.to(dtype), padding], dim=2)  # (T, C, d + 1)
    positions = torch.arange(1, text_mask.shape[1] + 1, device=text_mask.device)
    lengths = (text_mask * positions).amax(dim=1).clamp(min=1)  # up to the last real token
    order = lengths.argsort(descending=True)
    i2t = torch.empty(n_images, text_tokens.shape[0])  # columns in `order` until the end
    t2i = torch.empty_like(i2t)
    itemsize = torch.finfo(dtype).bits // 8
    # ~8 MB of similarities per block (1k image tokens x 2k text tokens), less if the budget says so
    block_values = min(2**21, int(budget_mb * 2**20 // itemsize))
    rows = max(1, min(n_images, 1024 // n_tokens or 1))  # images per block
    j = 0
    while j < len(order):
        width = int(lengths[order[j]])  # the longest text left: chunks widen as texts get shorter
        n = max(1, block_values // (rows * n_tokens * width))
        chunk = order[j : j + n]
        n = len(chunk)
        queries = texts[chunk, :width].reshape(n * width, dim + 1)  # (n·C, d + 1)
        mask = text_mask[chunk, :width, None]  # (n, C, 1)
        counts = mask.sum(dim=1).clamp(min=1)  # (n, 1)
        for i in range(0, n_images, rows):
            block = images[i : i + rows]
            b = block.shape[0]
            # texts-major (n, C, b, L): both maxima then reduce a non-innermost dim, which PyTorch vectorises
            # (a max over the short innermost C measured ~40x slower than the GEMM's own share)
            sim = (queries @ block.reshape(b * n_tokens, dim + 1).T).view(n, width, b, n_tokens)
            i2t[i : i + b, j : j + n] = sim.amax(dim=1).float().mean(dim=2).T.cpu()  # image tokens' best text
            best_image = sim.amax(dim=3).float()  # (n, C, b): each text token's best image token
            t2i[i : i + b, j : j + n] = ((best_image * mask).sum(dim=1) / counts).T.cpu()
        j += n
    scale = scale.float().cpu()
    unsorted = order.argsort().cpu()  # column j of the results holds text order[j]
    return scale * i2t[:, unsorted], scale * t2i[:, unsorted]
