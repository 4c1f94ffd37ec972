"""Retrieval scoring: the fast FLAIR mode equals a naive per-pair computation; top-k is symmetric."""

import pytest
import torch
import torch.nn.functional as F

from flair_core.pooling import TextConditionedPooling
from flair_core.scores import (
    chunk_sizes,
    explicit_attention,
    filip_scores,
    flair_scores,
    global_scores,
    topk_scores,
)


def random_case(images=6, texts=11, dim=32, patches=9, seed=0):
    torch.manual_seed(seed)
    pooling = TextConditionedPooling(dim)
    with torch.no_grad():  # move away from the default init so biases and norms matter
        for p in pooling.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return pooling, torch.randn(images, patches, dim), torch.randn(texts, dim), torch.tensor(14.3)


@torch.no_grad()
def naive(pooling, tokens, texts, scale):
    """One (image, text) pair at a time, through nn.MultiheadAttention itself."""
    out = torch.empty(tokens.shape[0], texts.shape[0])
    for i in range(tokens.shape[0]):
        for n in range(texts.shape[0]):
            q, x = texts[n][None, None], tokens[i][None]
            pooled, _ = pooling.attn(pooling.ln_q(q), pooling.ln_k(x), pooling.ln_v(x))
            out[i, n] = scale * F.cosine_similarity(pooled[0, 0], texts[n], dim=0)
    return out


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("budget_mb", [512, 0.001])
def test_fast_flair_mode_equals_the_naive_per_pair_scores(seed, budget_mb):
    pooling, tokens, texts, scale = random_case(seed=seed)
    torch.testing.assert_close(flair_scores(pooling, tokens, texts, scale, budget_mb=budget_mb),
                               naive(pooling, tokens, texts, scale), rtol=1e-4, atol=1e-4)


def test_bf16_scoring_stays_close_to_fp32():
    pooling, tokens, texts, scale = random_case(images=8, texts=40)
    fp32 = flair_scores(pooling, tokens, texts, scale)
    bf16 = flair_scores(pooling, tokens, texts, scale, dtype=torch.bfloat16)
    assert bf16.dtype == torch.float32
    assert (bf16 - fp32).abs().max() < 0.05 * scale  # bf16 has ~3 significant digits


@pytest.mark.parametrize("logit_size", [3.0, 300.0])
def test_explicit_attention_equals_softmax_attention_even_beyond_exp_range(logit_size):
    """bf16 scoring skips softmax's max pass (the zero key keeps every sum >= 1); logits above ~88 overflow
    exp, and that chunk falls back to softmax."""
    torch.manual_seed(0)
    q = torch.randn(2, 3, 5, 8) * logit_size / 8**0.5
    keys = F.pad(torch.randn(2, 3, 7, 8), (0, 0, 0, 1))  # the zero key last, as project_keys_values gives
    values = F.pad(torch.randn(2, 3, 7, 8), (0, 0, 0, 1))
    expected = torch.softmax(q @ keys.transpose(-1, -2), dim=-1) @ values
    overflows = not torch.isfinite((q @ keys.transpose(-1, -2)).exp().sum(-1)).all()
    assert overflows == (logit_size > 88)  # the large case really takes the fallback
    torch.testing.assert_close(explicit_attention(q, keys, values), expected)


def test_budget_bounds_the_chunk():
    images, texts = chunk_sizes(1000, 5000, 512, 8, 197, 4, budget_mb=64)
    per_pair = (4 * 512 + 8 * 197) * 4
    assert images * texts * per_pair <= 64 * 2**20
    assert chunk_sizes(3, 5, 512, 8, 197, 4, budget_mb=10_000) == (3, 5)
    assert chunk_sizes(1, 1, 512, 8, 197, 4, budget_mb=0.0001) == (1, 1)


def test_topk_with_k_equal_to_the_gallery_is_the_full_flair_ranking():
    pooling, tokens, texts, scale = random_case(images=6, texts=6)
    image_features = torch.randn(6, 32)
    full = flair_scores(pooling, tokens, texts, scale)
    i2t, t2i = topk_scores(pooling, image_features, tokens, texts, scale, k=6)
    assert torch.equal(i2t.argsort(dim=1), full.argsort(dim=1))
    assert torch.equal(t2i.argsort(dim=0), full.argsort(dim=0))


def test_topk_text_to_image_ranks_use_each_texts_own_top_k():
    pooling, tokens, texts, scale = random_case(images=7, texts=5)
    image_features = torch.randn(7, 32)
    k = 2
    coarse = global_scores(image_features, texts, scale)
    full = flair_scores(pooling, tokens, texts, scale)
    _, t2i = topk_scores(pooling, image_features, tokens, texts, scale, k=k)
    for n in range(texts.shape[0]):
        chosen = coarse[:, n].topk(k).indices
        best = chosen[full[chosen, n].argmax()]
        assert t2i[:, n].argmax() == best  # re-ranked among the text's own k images by FLAIR score
        others = [i for i in range(7) if i not in chosen.tolist()]
        assert (t2i[chosen, n].min() > t2i[others, n].max()).item()


def test_topk_larger_than_gallery_is_refused():
    pooling, tokens, texts, scale = random_case(images=3, texts=4)
    with pytest.raises(ValueError, match="top-k 5 is larger than the gallery"):
        topk_scores(pooling, torch.randn(3, 32), tokens, texts, scale, k=5)


@pytest.mark.parametrize("budget_mb", [1e-3, 512])  # a few texts per chunk, or all at once
@pytest.mark.parametrize("image_tokens", [6, 300])  # all images in one block, or blocks of 3 (1024 // 300)
def test_filip_scores_match_the_training_similarity(budget_mb, image_tokens):
    from flair_core.methods.filip import token_similarities

    torch.manual_seed(0)
    images = F.normalize(torch.randn(4, image_tokens, 8), dim=-1)
    texts = F.normalize(torch.randn(10, 7, 8), dim=-1)
    mask = torch.rand(10, 7) > 0.3  # holes too, though real padding only ends a text
    mask[:, 0] = True
    mask[3, 1:] = False  # a one-token text
    i2t, t2i = filip_scores(images, texts, mask, torch.tensor(2.0), budget_mb=budget_mb)
    ref_i2t, ref_t2i = token_similarities(images, texts, mask)
    torch.testing.assert_close(i2t, 2 * ref_i2t)
    torch.testing.assert_close(t2i, 2 * ref_t2i.T)
    low_i2t, low_t2i = filip_scores(images, texts, mask, torch.tensor(2.0), dtype=torch.bfloat16)
    torch.testing.assert_close(low_i2t, i2t, atol=0.05, rtol=0)  # bf16: ~3 significant digits of s·cos
    torch.testing.assert_close(low_t2i, t2i, atol=0.05, rtol=0)
