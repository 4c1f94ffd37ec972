"""Text-conditioned attention maps: renormalisation, zero slot, grid sizes, PNG overlay."""

import pytest
import torch
from PIL import Image

from flair_core.evaluation.attention import attention_maps, patch_attention, render_attention_png, to_grid
from tests.helpers.models import micro_model

CAPTIONS = ["a red circle.", "a blue square in the top left.", "a green background."]


@pytest.fixture(scope="module")
def flair():
    return micro_model()


@pytest.mark.parametrize("image_size, grid", [(32, 4), (64, 8)])  # 16 and 64 patches
def test_maps_have_the_model_grid_and_rows_sum_to_one(image_size, grid):
    model, tokenizer, _ = micro_model(image_size=image_size)
    maps, zero = attention_maps(model, tokenizer, torch.randn(3, image_size, image_size), CAPTIONS)
    assert maps.shape == (3, grid, grid) and zero.shape == (3,)
    assert torch.allclose(maps.sum(dim=(1, 2)), torch.ones(3), atol=1e-5)
    assert (maps >= 0).all() and ((zero > 0) & (zero < 1)).all()


def test_zero_slot_mass_is_what_the_pooling_block_returns(flair):
    model, tokenizer, _ = flair
    image = torch.randn(3, 32, 32)
    maps, zero = attention_maps(model, tokenizer, image, CAPTIONS)
    with torch.no_grad():
        tokens = model.image_post(model.encode_image(image[None])[1])
        queries = model.text_post(model.encode_text(tokenizer(CAPTIONS))[0])
        # (1, N, L+1)
        _, weights = model.visual_proj(queries[None], tokens, need_weights=True, average_heads=True)
    assert torch.allclose(zero, weights[0, :, -1], atol=1e-6)
    # Renormalised patches = the block's patch weights divided by what the zero slot left over.
    expected = weights[0, :, :-1] / (1 - weights[0, :, -1:])
    assert torch.allclose(maps.flatten(1), expected, atol=1e-5)


def test_patch_attention_renormalises_a_known_case():
    class FixedPooling:  # returns hand-made head-averaged weights (B=1, N=2, L+1=5)
        def __call__(self, queries, tokens, need_weights, average_heads):
            return None, torch.tensor([[[0.1, 0.2, 0.1, 0.1, 0.5], [0.0, 0.0, 0.0, 0.8, 0.2]]])

    weights, zero = patch_attention(FixedPooling(), torch.zeros(2, 4), torch.zeros(1, 4, 4))
    assert torch.allclose(zero, torch.tensor([[0.5, 0.2]]))
    assert torch.allclose(weights, torch.tensor([[[0.2, 0.4, 0.2, 0.2], [0.0, 0.0, 0.0, 1.0]]]))


def test_models_without_pooling_fail_in_one_line():
    model, tokenizer, _ = micro_model("clip")
    with pytest.raises(ValueError, match="visual_proj") as err:
        attention_maps(model, tokenizer, torch.randn(3, 32, 32), CAPTIONS)
    assert "\n" not in str(err.value)


def test_to_grid_rejects_non_square_counts():
    assert to_grid(torch.arange(16.0)).tolist()[1] == [4.0, 5.0, 6.0, 7.0]  # row-major, like the ViT
    with pytest.raises(ValueError, match="square"):
        to_grid(torch.zeros(2, 12))


def test_overlay_png_colours_attended_cells_only(tmp_path):
    image = Image.new("RGB", (40, 30), (128, 128, 128))  # landscape: the centre 30×30 square is shown
    attention = torch.zeros(4, 4)
    attention[0, 0] = 0.3  # all attention in the top-left cell; scaled to 1 by the max
    path = render_attention_png(image, attention, tmp_path / "maps" / "a.png")
    out = Image.open(path)
    assert out.format == "PNG" and out.size == (30, 30)
    r, _, b = out.getpixel((0, 0))
    assert r > 200 and b < 80  # strongly coloured where the map is high
    assert out.getpixel((29, 29)) == (128, 128, 128)  # untouched where it is 0


def test_overlay_of_a_real_map(flair, tmp_path):
    model, tokenizer, transform = flair
    photo = Image.new("RGB", (48, 32), (30, 90, 200))
    maps, _ = attention_maps(model, tokenizer, transform(photo), CAPTIONS[:1])
    path = render_attention_png(photo, maps[0], tmp_path / "m.png")
    assert Image.open(path).size == (32, 32)
    with pytest.raises(ValueError, match="one"):
        render_attention_png(photo, maps, tmp_path / "bad.png")
