"""Zero-shot classification: top-k by hand, prompt ensembles, the built-in and ImageFolder sources."""

import io
import tarfile

import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from flair_core.data.classification_sets import (
    builtin_classification,
    imagefolder_classification,
    shard_samples,
)
from flair_core.data.errors import DataError
from flair_core.evaluation.classification import evaluate_classification, topk_accuracy
from flair_core.evaluation.templates import CLIP_BEST, FILIP, class_text_embeddings, resolve_templates
from tests.helpers.models import micro_model


@pytest.fixture(scope="module")
def micro():
    return micro_model("clip")


def test_topk_accuracy_by_hand():
    scores = torch.tensor([[0.9, 0.1, 0.0],   # label 0: top-1 hit
                           [0.5, 0.4, 0.1],   # label 1: second -> top-2 hit only
                           [0.7, 0.2, 0.1]])  # label 2: last -> only k >= 3
    labels = torch.tensor([0, 1, 2])
    assert topk_accuracy(scores, labels, (1, 2, 3)) == pytest.approx({1: 1 / 3, 2: 2 / 3, 3: 1.0})
    assert topk_accuracy(scores, labels, (5,)) == {5: 1.0}  # k capped at the 3 classes
    with pytest.raises(ValueError, match="expected scores"):
        topk_accuracy(scores, torch.tensor([0, 1]))


def test_class_embeddings_are_the_renormalised_template_mean(micro):
    model, tokenizer, _ = micro
    names = ["circle", "golden retriever"]
    both = class_text_embeddings(model, tokenizer, names, ["a {}.", "art of the {}."], batch_size=1)
    assert both.shape == (2, model.config.embed_dim)
    assert torch.allclose(both.norm(dim=-1), torch.ones(2))
    one = class_text_embeddings(model, tokenizer, names, ["a {}."])
    two = class_text_embeddings(model, tokenizer, names, ["art of the {}."])
    assert torch.allclose(both, F.normalize(one + two, dim=-1), atol=1e-6)
    assert torch.allclose(both, class_text_embeddings(model, tokenizer, names, ["a {}.", "art of the {}."]),
                          atol=1e-6)  # batch size does not matter


def test_template_sets():
    assert resolve_templates("clip_best") == CLIP_BEST and len(CLIP_BEST) == 8
    assert all(t.endswith("I like it.") for t in FILIP)
    with pytest.raises(ValueError, match="unknown template set"):
        resolve_templates("imagenet_1000")
    with pytest.raises(ValueError, match="one '{}'"):
        resolve_templates(["a photo."])


def test_builtin_source_and_evaluation(tiny_data, micro):
    source = builtin_classification(tiny_data)
    assert source.class_names == ("circle", "square", "triangle", "diamond", "cross", "ring")
    assert source.num_images == 60
    labels = [label for _, label in source.samples()]
    assert len(labels) == 60 and set(labels) <= set(range(6))
    result = evaluate_classification(*micro, source, batch_size=16)
    assert result["num_images"] == 60 and result["num_classes"] == 6
    assert 0 <= result["top1"] <= result["top5"] <= 1


def test_shard_missing_parts_fail_before_compute(tmp_path):
    (tmp_path / "classification").mkdir()
    with tarfile.open(tmp_path / "classification" / "shard-000000.tar", "w") as tar:
        for name in ["a-1.png", "a-1.cls", "a-2.png"]:  # a-2 has no label
            info = tarfile.TarInfo(name)
            info.size = 1
            tar.addfile(info, io.BytesIO(b"0"))
    with pytest.raises(DataError, match=r"1 of 2 samples lack one of png/cls, first: .*a-2") as err:
        shard_samples(tmp_path / "classification", ("png", "cls"))
    assert "\n" not in str(err.value)
    with pytest.raises(DataError, match="no shards"):
        shard_samples(tmp_path / "nothing", ("png",))


def test_imagefolder_source(tmp_path, micro):
    colours = {"golden_retriever": (200, 150, 50), "tabby_cat": (90, 90, 90)}
    for name, colour in colours.items():
        (tmp_path / name).mkdir()
        Image.new("RGB", (40, 30), colour).save(tmp_path / name / "1.jpg")
        Image.new("RGB", (30, 30), colour).save(tmp_path / name / "2.PNG")
        (tmp_path / name / "notes.txt").write_text("not an image")
    source = imagefolder_classification(tmp_path)
    assert source.class_names == ("golden retriever", "tabby cat")
    assert source.num_images == 4
    assert [label for _, label in source.samples()] == [0, 0, 1, 1]
    result = evaluate_classification(*micro, source, templates="single", batch_size=3)
    assert result["num_images"] == 4 and result["top5"] == 1.0  # only 2 classes


def test_imagefolder_errors(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        imagefolder_classification(tmp_path / "missing")
    (tmp_path / "empty_class").mkdir()
    with pytest.raises(DataError, match="no images"):
        imagefolder_classification(tmp_path)
