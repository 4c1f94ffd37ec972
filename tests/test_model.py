"""Model construction: configs, the real ViT-B-16-FLAIR key layout, presets, library import weight."""

import json
import subprocess
import sys

import pytest
import torch

from flair_core import ConfigError, builtin_model_names, create_model, load_model_config, towers


def test_vit_b16_flair_has_exactly_the_released_keys_and_shapes(shared_dir):
    expected = json.loads((shared_dir / "reference" / "vit_b16_flair_state_dict_shapes.json").read_text())
    with torch.device("meta"):  # no memory, no init cost: only names and shapes matter
        model = create_model("ViT-B-16-FLAIR")
    actual = {k: list(v.shape) for k, v in model.state_dict().items()}
    assert sorted(set(actual) - set(expected)) == []
    assert sorted(set(expected) - set(actual)) == []
    assert {k: v for k, v in actual.items() if v != expected[k]} == {}
    assert sum(p.numel() for p in model.parameters()) == 150_674_434


@pytest.mark.parametrize("name", ["micro-32", "tiny-64"])
def test_cpu_presets_run_the_same_code_path(name):
    model = create_model(name)
    cfg = model.config
    images = torch.randn(2, 3, cfg.vision_cfg.image_size, cfg.vision_cfg.image_size)
    texts = torch.randint(1, 1000, (2, 3, cfg.text_cfg.context_length))
    texts[..., 10] = 49407  # EOT
    out = model(images, texts)
    assert out["image_features"].shape == (2, cfg.embed_dim)
    assert out["image_tokens"].shape == (2, cfg.vision_cfg.num_patches, cfg.embed_dim)
    assert out["text_features"].shape == (6, cfg.embed_dim)
    per_image, _ = model.get_logits(images, texts.flatten(0, 1))
    assert per_image.shape == (2, 6) and torch.isfinite(per_image).all()


def test_builtin_configs_listed():
    assert {"ViT-B-16-FLAIR", "tiny-64", "micro-32"} <= set(builtin_model_names())


def test_unknown_config_name_is_one_clear_line():
    with pytest.raises(ConfigError, match="unknown model config 'ViT-Z'") as err:
        load_model_config("ViT-Z")
    assert "\n" not in str(err.value)


def test_invalid_config_names_the_key_path(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"embed_dim": 32, "vision_cfg": {"patch_size": -8}, "text_cfg": {"widht": 64}}))
    with pytest.raises(ConfigError) as err:
        load_model_config(bad)
    message = str(err.value)
    assert "vision_cfg.patch_size" in message and "text_cfg.widht" in message and "\n" not in message


def test_pooling_heads_must_divide_embed_dim(tmp_path):
    cfg = tmp_path / "odd.json"
    cfg.write_text(json.dumps({"embed_dim": 36, "vision_cfg": {"image_size": 32, "patch_size": 8, "width": 64,
                                                                "layers": 1, "head_width": 32},
                               "text_cfg": {"width": 64, "heads": 2, "layers": 1}}))
    with pytest.raises(ValueError, match="embed_dim 36 must be divisible by the 8 pooling heads"):
        create_model(cfg)


def test_library_import_pulls_in_no_orchestrator():
    code = ("import sys, flair_core, flair_core.scores; "
            "print(sorted({m.split('.')[0] for m in sys.modules} & "
            "{'prefect','mlflow','dvc','streamlit','optuna'}))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


def random_ids(lengths: torch.Tensor) -> torch.Tensor:
    """Token ids with SOT, random words and EOT at each given length, zero padding after."""
    ids = torch.randint(1, 1000, (len(lengths), 77))
    ids[:, 0] = 49406
    ids[torch.arange(77)[None] >= lengths[:, None]] = 0
    ids[torch.arange(len(lengths)), lengths - 1] = 49407
    return ids


def test_length_groups_leave_text_features_unchanged():
    """Texts of mixed lengths run in several length groups: the same features as one padded batch, in the
    input order."""
    torch.manual_seed(0)
    model = create_model("micro-32").eval()
    lengths = torch.cat([torch.randint(3, 40, (160,)), torch.full((32,), 77)])[torch.randperm(192)]
    ids = random_ids(lengths)
    assert len(towers.length_groups(lengths, model.config.text_cfg.width)) > 1
    grouped_global, grouped_local = model.encode_text(ids)
    groups, towers.LENGTH_GROUPS = towers.LENGTH_GROUPS, 1
    try:
        global_one, local_one = model.encode_text(ids)
    finally:
        towers.LENGTH_GROUPS = groups
    torch.testing.assert_close(grouped_global, global_one, rtol=1e-5, atol=1e-5)
    real = ids[:, : local_one.shape[1]] != 0
    torch.testing.assert_close(grouped_local[real], local_one[real], rtol=1e-5, atol=1e-5)
    assert grouped_local.shape == local_one.shape == (len(lengths), int(lengths.max()), 64)


def test_repeated_texts_are_encoded_once_with_the_features_and_gradients_of_each_row_alone():
    torch.manual_seed(0)
    model = create_model("micro-32").train()
    distinct = random_ids(torch.randint(3, 30, (20,)))
    ids = torch.cat([distinct, distinct[:8], distinct[3:4]])[torch.randperm(29)]
    weights = torch.randn(29, model.config.text_cfg.width)
    features, _ = model.encode_text(ids)
    (features * weights).sum().backward()
    deduplicated = model.token_embedding.weight.grad.clone()
    model.zero_grad()
    one_by_one = torch.cat([model.encode_text(row[None])[0] for row in ids])
    (one_by_one * weights).sum().backward()
    torch.testing.assert_close(features, one_by_one, rtol=1e-5, atol=1e-5)
    reference = model.token_embedding.weight.grad  # summed over rows in another order: float rounding only
    torch.testing.assert_close(deduplicated, reference, rtol=1e-4, atol=1e-5 * float(reference.abs().max()))


def padded_cost(groups: list[torch.Tensor], lengths: torch.Tensor, width: int) -> float:
    """The text tower's cost model of a grouping (multiply-adds per layer, the price per call included)."""
    cost = 0.0
    for rows in groups:
        cut = float(lengths[rows].max())
        cost += len(rows) * cut * (12 * width**2 + 2 * cut * width) + towers.GROUP_CALL_MACS
    return cost


def test_length_groups_put_long_captions_apart_and_cost_no_more_than_equal_splits():
    """DreamLIP's batch: 32 long captions and 128 short sub-captions. The long ones form their own group, and
    no split into equal groups (the previous rule) costs less under the same model."""
    torch.manual_seed(0)
    lengths = torch.cat([torch.randint(9, 37, (128,)), torch.full((32,), 77)])[torch.randperm(160)]
    groups = towers.length_groups(lengths, width=128)
    assert sorted(torch.cat(groups).tolist()) == list(range(160))  # every row once
    assert all(len(g) for g in groups) and len(groups) <= towers.LENGTH_GROUPS
    assert sorted(lengths[groups[-1]].tolist()) == [77] * 32
    order = lengths.argsort()
    for n in range(1, towers.LENGTH_GROUPS + 1):
        equal = list(order.tensor_split(n))
        assert padded_cost(groups, lengths, 128) <= padded_cost(equal, lengths, 128) + 1e-6


def test_length_groups_of_equal_lengths_stay_one_group():
    assert len(towers.length_groups(torch.full((500,), 77), width=128)) == 1
    assert len(towers.length_groups(torch.tensor([5, 9, 77]), width=128)) == 1  # calls cost more than padding


def test_trimming_padding_columns_leaves_text_features_unchanged():
    torch.manual_seed(0)
    model = create_model("micro-32").eval()
    ids = torch.zeros(3, 77, dtype=torch.long)
    ids[:, 0] = 49406
    ids[:, 1:6] = torch.randint(1, 1000, (3, 5))
    ids[0, 6], ids[1, 4], ids[2, 9] = 49407, 49407, 49407  # last EOT at column 9
    global_trimmed, local_trimmed = model.encode_text(ids)
    assert local_trimmed.shape == (3, 10, 64)
    # Reference: the full 77-column computation, written out.
    x = model.token_embedding(ids) + model.positional_embedding
    x = model.ln_final(model.transformer(x, attn_mask=model.attn_mask))
    reference = x[torch.arange(3), ids.argmax(-1)]
    torch.testing.assert_close(global_trimmed, reference, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(local_trimmed, x[:, :10], rtol=1e-5, atol=1e-5)  # three texts: one group
