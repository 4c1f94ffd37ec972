"""Our FLAIR reproduces the tensors the authors' original implementation computed (fixture README)."""

import json

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from flair_core import ModelConfig, create_model, get_tokenizer, get_transform, load_weights
from flair_core.methods.flair import FlairLoss, FlairSettings, text_set_indices

RTOL, ATOL, ATOL_LOGITS = 1e-4, 1e-5, 1e-4


@pytest.fixture(scope="module")
def fx(reference_fixture):
    config = json.loads((reference_fixture / "config.json").read_text())
    expected = load_file(str(reference_fixture / "tensors.safetensors"))
    texts = json.loads((reference_fixture / "texts.json").read_text())["texts"]
    model_config = ModelConfig.model_validate(
        {**config["model_config"], "init_logit_scale": config["constructor"]["init_logit_scale"]}
    )
    model = load_weights(create_model(model_config), reference_fixture / "state_dict.safetensors").eval()
    return {"root": reference_fixture, "config": config, "expected": expected, "texts": texts, "model": model}


def close(actual, expected, atol=ATOL):
    torch.testing.assert_close(actual.reshape(expected.shape), expected, rtol=RTOL, atol=atol)


def test_image_preprocessing_matches(fx):
    transform = get_transform(fx["model"].config, train=False)
    n = fx["expected"]["images"].shape[0]
    images = torch.stack([transform(Image.open(fx["root"] / "images" / f"img_{i}.png").convert("RGB"))
                          for i in range(n)])
    close(images, fx["expected"]["images"])


def test_tokenizer_matches(fx):
    ids = get_tokenizer(fx["model"].config)([t for per_image in fx["texts"] for t in per_image])
    expected = fx["expected"]["text_tokens"]
    assert torch.equal(ids.reshape(expected.shape), expected)


@torch.no_grad()
def test_encoders_and_projections(fx):
    m, e = fx["model"], fx["expected"]
    image_global, image_local = m.encode_image(e["images"])
    text_global, text_local = m.encode_text(e["text_tokens"])
    close(image_global, e["image_global"])
    close(image_local, e["image_local"])
    close(text_global, e["text_global"])
    close(text_local, e["text_local"])
    out = m(e["images"], e["text_tokens"])
    close(out["image_features"], e["image_global_post"])
    close(out["image_tokens"], e["image_local_post"])
    close(out["text_features"], e["text_global_post"])
    close(out["logit_scale"], e["logit_scale_exp"])
    close(out["logit_bias"], e["logit_bias"])


@torch.no_grad()
def test_pooling_logits_and_attention(fx):
    m, e = fx["model"], fx["expected"]
    out = m(e["images"], e["text_tokens"])
    texts, tokens = out["text_features"], out["image_tokens"]
    close(m.pool(texts, tokens), e["conditioned_image_features"])

    per_image, per_text = m.get_logits(e["images"], e["text_tokens"])
    close(per_image, e["flair_logits_per_image"], ATOL_LOGITS)
    close(per_text, e["flair_logits_per_text"], ATOL_LOGITS)
    per_image, per_text = m.get_logits_as_clip(e["images"], e["text_tokens"])
    close(per_image, e["clip_logits_per_image"], ATOL_LOGITS)
    close(per_text, e["clip_logits_per_text"], ATOL_LOGITS)

    queries = texts.unsqueeze(0).expand(tokens.shape[0], -1, -1)
    _, averaged = m.visual_proj(queries, tokens, need_weights=True)
    _, per_head = m.visual_proj(queries, tokens, need_weights=True, average_heads=False)
    close(averaged, e["attn_weights_all_pairs"])
    close(per_head, e["attn_weights_all_pairs_per_head"])

    pooled, weights = m.visual_proj(texts[:1, None], tokens[:1], need_weights=True)
    close(pooled, e["pair0_pooled"])
    close(weights, e["pair0_attn_weights"])


def test_pooling_equals_torch_multihead_attention(fx):
    """The split query/key-value/attend path computes what nn.MultiheadAttention computes."""
    pool = fx["model"].visual_proj
    dim = fx["expected"]["image_local_post"].shape[-1]  # the pooling block's width (D), from the fixture
    q, x = torch.randn(3, 5, dim), torch.randn(3, 7, dim)
    ours, weights = pool(q, x, need_weights=True)
    ref, ref_weights = pool.attn(pool.ln_q(q), pool.ln_k(x), pool.ln_v(x), need_weights=True)
    close(ours, ref)
    close(weights, ref_weights)


def loss_and_grads(fx, tcs_weight):
    m, e = fx["model"], fx["expected"]
    m.train()
    m.zero_grad()
    out = m(e["images"], e["text_tokens"])
    k = fx["config"]["K"]
    assert out["text_features"].shape[0] == k * out["image_features"].shape[0]
    terms = FlairLoss(FlairSettings(tcs_weight=tcs_weight))(out, m, offsets=e["loss_random_offsets"])
    loss = sum(terms.values())
    loss.backward()
    grads = {n: p.grad.clone() for n, p in m.named_parameters()}
    m.eval()
    return loss.detach(), terms, grads


def test_text_set_indices(fx):
    e = fx["expected"]
    assert torch.equal(text_set_indices(e["loss_random_offsets"], fx["config"]["K"]), e["loss_text_indices"])


def test_losses_and_gradients(fx):
    e = fx["expected"]
    tcs_only, terms, _ = loss_and_grads(fx, tcs_weight=1.0)
    assert set(terms) == {"tcs"}
    close(tcs_only, e["loss_tcs_only"], ATOL_LOGITS)

    both, terms, grads = loss_and_grads(fx, tcs_weight=0.5)
    close(both, e["loss_tcs_plus_mps"], ATOL_LOGITS)
    close(2 * terms["mps"].detach(), e["loss_mps_only_derived"], ATOL_LOGITS)
    grad_keys = [k for k in e if k.startswith("grad.")]
    assert grad_keys, "fixture lists no gradients"
    for key in grad_keys:
        close(grads[key.removeprefix("grad.")], e[key])


@torch.no_grad()
def test_retrieval_score_matrices(fx):
    from flair_core.scores import flair_pair_scores, flair_scores, global_scores, topk_mask

    m, e = fx["model"], fx["expected"]
    out = m(e["images"], e["text_tokens"])
    args = (out["text_features"], out["logit_scale"])
    # A one-byte budget makes every chunk a single (image, text) pair, whatever the fixture's sizes: several
    # image batches and text chunks.
    close(flair_scores(m.visual_proj, out["image_tokens"], *args, budget_mb=2**-20),
          e["retrieval_scores_flair"], ATOL_LOGITS)
    coarse = global_scores(out["image_features"], *args)
    close(coarse, e["retrieval_scores_global"], ATOL_LOGITS)
    k = fx["config"]["topk"]
    selected = topk_mask(coarse, k, dim=1)
    expected = torch.zeros_like(selected).scatter_(1, e["retrieval_topk_indices"], True)
    assert torch.equal(selected, expected)
    fine = flair_pair_scores(m.visual_proj, out["image_tokens"], *args, selected)
    close(fine.gather(1, e["retrieval_topk_indices"]), e["retrieval_scores_topk"], ATOL_LOGITS)
    assert torch.isnan(fine[~selected]).all()
