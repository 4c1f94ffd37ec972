"""Zero-shot segmentation: mIoU by hand, sliding windows, an oracle, the built-in run and folder loaders."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from flair_core.data.errors import DataError
from flair_core.data.registry import get_benchmark
from flair_core.data.segmentation_sets import (
    SegmentationSource,
    ade20k_segmentation,
    builtin_segmentation,
    cityscapes_segmentation,
    voc_segmentation,
)
from flair_core.evaluation import segmentation as seg
from flair_core.evaluation.runner import EvalOptions
from flair_core.evaluation.segmentation import (
    class_scorer,
    confusion_matrix,
    evaluate_segmentation,
    iou_per_class,
    mean_iou,
    pixel_accuracy,
    predict_labels,
    sliding_window_scores,
    trivial_miou,
    window_starts,
)
from tests.helpers.models import micro_model

NAN = float("nan")


@pytest.fixture(scope="module")
def flair():
    return micro_model()


# ---- metrics by hand ----

def test_confusion_iou_and_accuracy_by_hand():
    pred = torch.tensor([[0, 1], [1, 1]])
    target = torch.tensor([[0, 1], [255, 0]])  # 255 ignored: 3 pixels count
    confusion = confusion_matrix(pred, target, 2)
    assert confusion.tolist() == [[1, 1], [0, 1]]  # rows = truth, columns = prediction
    iou = iou_per_class(confusion)
    assert iou.tolist() == [0.5, 0.5]  # class 0: 1 / (2 + 1 - 1); class 1: 1 / (1 + 2 - 1)
    assert mean_iou(iou) == 0.5 and pixel_accuracy(confusion) == pytest.approx(2 / 3)


def test_mean_iou_skips_classes_neither_present_nor_predicted():
    confusion = torch.tensor([[3, 1, 0], [0, 4, 0], [0, 0, 0]])
    iou = iou_per_class(confusion)
    assert iou[:2].tolist() == [0.75, 0.8] and iou[2].isnan()
    assert mean_iou(iou) == pytest.approx(0.775)
    predicted_only = iou_per_class(torch.tensor([[2, 2], [0, 0]]))  # class 1 predicted, never true -> 0
    assert predicted_only.tolist() == [0.5, 0.0]
    assert np.isnan(mean_iou(torch.tensor([NAN, NAN])))


def test_confusion_rejects_out_of_range_labels():
    with pytest.raises(ValueError, match="outside 0..1"):
        confusion_matrix(torch.tensor([0, 2]), torch.tensor([0, 1]), 2)


def test_predict_labels_with_background_threshold():
    scores = torch.tensor([[[0.9, 0.2, 0.1]], [[0.1, 0.6, 0.3]]])  # 2 foreground classes, 1×3 pixels
    assert predict_labels(scores).tolist() == [[0, 1, 1]]
    assert predict_labels(scores, background_threshold=0.5).tolist() == [[1, 2, 0]]


# ---- sliding windows and maps ----

def test_window_starts_cover_the_image():
    assert window_starts(32, 32, 16) == [0]
    assert window_starts(20, 32, 16) == [0]
    assert window_starts(64, 32, 16) == [0, 16, 32]
    assert window_starts(70, 32, 32) == [0, 32, 38]


def test_overlapping_windows_are_averaged_and_cover_everything():
    ones = sliding_window_scores(lambda x: torch.ones(x.shape[0], 2, 4, 4), [torch.zeros(3, 50, 70)], 32, 24)
    assert ones[0].shape == (2, 50, 70) and torch.equal(ones[0], torch.ones(2, 50, 70))
    # A score equal to each window's left offset: pixels seen by windows at 0 and 24 average to 12.
    def offset(x):
        return x[:, :1, :4, :4] * 0 + x[:, 1:2, :1, :1]

    image = torch.zeros(3, 32, 56)
    image[1] = torch.arange(56.0)  # channel 1 holds the column index
    out = sliding_window_scores(offset, [image], 32, 24)[0]
    assert out[0, 0, 0] == 0 and out[0, 0, 30] == 12 and out[0, 0, 55] == 24


@pytest.mark.parametrize("image_size, grid", [(32, 4), (64, 8)])  # 16 and 64 patches
@pytest.mark.parametrize("mode", ["patch", "attention"])
def test_class_maps_take_the_model_grid(image_size, grid, mode):
    model, _, _ = micro_model(image_size=image_size)
    classes = F.normalize(torch.randn(5, model.config.embed_dim), dim=-1)
    with torch.no_grad():
        maps = class_scorer(model, classes, mode)(torch.randn(2, 3, image_size, image_size))
    assert maps.shape == (2, 5, grid, grid)
    if mode == "attention":  # renormalised over the patches of each class
        assert torch.allclose(maps.sum(dim=(2, 3)), torch.ones(2, 5), atol=1e-5)


def test_sliding_window_matches_single_window_and_covers_larger_images(flair):
    model, _, _ = flair
    score = class_scorer(model, F.normalize(torch.randn(4, model.config.embed_dim), dim=-1), "patch")
    image = torch.randn(3, 32, 32)
    with torch.no_grad():
        single = F.interpolate(score(image[None]), size=(32, 32), mode="bilinear", align_corners=False)[0]
        same, big, small = sliding_window_scores(score,
                                                 [image, torch.randn(3, 64, 64), torch.randn(3, 20, 24)],
                                                 32, 16, batch_size=3)
    assert torch.allclose(same, single, atol=1e-6)
    assert big.shape == (4, 64, 64) and torch.isfinite(big).all()
    assert small.shape == (4, 20, 24)  # padded to a window, cropped back


def test_attention_mode_needs_visual_proj():
    model, tokenizer, transform = micro_model("clip")
    source = SegmentationSource("x", ("a", "b"), lambda: iter([]), 0)
    with pytest.raises(ValueError, match="visual_proj") as err:
        evaluate_segmentation(model, tokenizer, transform, source, mode="attention")
    assert "\n" not in str(err.value)


# ---- end to end ----

def block_source(with_background: bool) -> SegmentationSource:
    """64×48 images of 8-px blocks whose red level encodes the class (4 classes, one row ignored)."""
    rng = np.random.default_rng(0)

    def samples():
        for _ in range(3):
            blocks = rng.integers(0, 4, (6, 8))
            labels = np.kron(blocks, np.ones((8, 8), np.int64))
            image = np.zeros((48, 64, 3), np.uint8)
            image[..., 0] = labels * 60
            labels[:2] = 255
            yield Image.fromarray(image), labels

    names = ("background", "a", "b", "c") if with_background else ("w", "a", "b", "c")
    return SegmentationSource("blocks", names, samples, 3)


@pytest.mark.parametrize("threshold", [None, 0.5])
def test_an_oracle_score_gives_miou_one(flair, monkeypatch, threshold):
    # Decodes each pixel's class from its red level, one-hot at full window resolution (a patch-level
    # one-hot would not survive bilinear upsampling at patch corners, so it could not be exact).
    def oracle(model, classes, mode):
        def score(images):
            mean, std = seg.normalisation(None)
            red = (images * std + mean)[:, 0] * 255  # (B, S, S)
            one_hot = F.one_hot((red / 60).round().long(), 4).permute(0, 3, 1, 2).float()  # (B, 4, S, S)
            return one_hot[:, 4 - classes.shape[0]:]  # without background when it has no prompt

        return score

    monkeypatch.setattr(seg, "class_scorer", oracle)
    model, tokenizer, transform = flair
    result = evaluate_segmentation(model, tokenizer, transform, block_source(True),
                                   background_threshold=threshold, stride=16, batch_size=2)
    assert result["miou"] == 1.0 and result["pixel_accuracy"] == 1.0 and result["num_images"] == 3
    assert set(result["iou"]) == {"background", "a", "b", "c"}


@pytest.mark.parametrize("mode, threshold", [("patch", None), ("attention", 0.05)])
def test_builtin_test_split_run(tiny_data, flair, mode, threshold):
    source = builtin_segmentation(tiny_data, "test")
    assert source.class_names[0] == "background" and source.num_images == 64
    result = evaluate_segmentation(*flair, source, mode=mode, background_threshold=threshold, batch_size=16)
    assert result["num_images"] == 64
    assert set(result["iou"]) <= set(source.class_names) and "background" in result["iou"]
    assert all(0.0 <= v <= 1.0 for v in result["iou"].values())
    assert 0.0 <= result["miou"] <= 1.0 and 0.0 <= result["pixel_accuracy"] <= 1.0


def test_background_threshold_needs_a_background_class(flair):
    with pytest.raises(ValueError, match="background_threshold needs 'background'"):
        evaluate_segmentation(*flair, block_source(False), background_threshold=0.5)


# ---- folder layouts ----

def write_mask(path, labels, palette: bool = False):
    path.parent.mkdir(parents=True, exist_ok=True)
    mask = Image.fromarray(labels.astype(np.uint8))
    if palette:
        mask.putpalette([v for i in range(256) for v in (i, 255 - i, (7 * i) % 256)])
    mask.save(path)


def write_image(path, size=(40, 48), fmt=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, (120, 60, 30)).save(path, format=fmt)


@pytest.fixture
def voc(tmp_path):
    labels = np.kron(np.array([[0, 15], [255, 20]]), np.ones((24, 20), np.int64))  # 48×40
    for name in ["a", "b"]:
        write_image(tmp_path / "JPEGImages" / f"{name}.jpg")
        write_mask(tmp_path / "SegmentationClass" / f"{name}.png", labels, palette=True)
    (tmp_path / "ImageSets" / "Segmentation").mkdir(parents=True)
    (tmp_path / "ImageSets" / "Segmentation" / "val.txt").write_text("a\nb\n")
    return tmp_path


def test_voc_and_voc20(voc):
    assert Image.open(voc / "SegmentationClass" / "a.png").mode == "P"
    source = voc_segmentation(voc)
    assert len(source.class_names) == 21 and source.class_names[0] == "background" and source.num_images == 2
    image, labels = next(source.samples())
    assert image.size == (40, 48) and labels.shape == (48, 40)
    assert labels[0, 0] == 0 and labels[0, -1] == 15 and labels[-1, 0] == 255 and labels[-1, -1] == 20
    voc20 = get_benchmark("voc20").load(voc, "val", EvalOptions())  # the registry's VOC without background
    assert len(voc20.class_names) == 20 and "background" not in voc20.class_names
    _, labels = next(voc20.samples())
    assert labels[0, 0] == 255 and labels[0, -1] == 14 and labels[-1, 0] == 255 and labels[-1, -1] == 19
    assert voc20.class_names[14] == "person"


def test_voc_evaluation_uses_sliding_windows(voc):
    result = evaluate_segmentation(*micro_model("clip"), voc_segmentation(voc), templates="single", stride=8)
    assert result["num_images"] == 2 and 0.0 <= result["miou"] <= 1.0


def test_missing_or_unusable_files_and_escaping_ids_fail_before_compute(voc):
    (voc / "SegmentationClass" / "b.png").unlink()
    with pytest.raises(DataError,
                       match=r"1 of 4 image/mask files unusable \(missing\), first: "
                             r".*SegmentationClass/b\.png") as e:
        voc_segmentation(voc)
    assert "\n" not in str(e.value)
    (voc / "SegmentationClass" / "b.png").write_bytes(b"")
    with pytest.raises(DataError,
                       match=r"unusable \(empty file\), first: .*SegmentationClass/b\.png \(empty file\)$"):
        voc_segmentation(voc)
    listing = voc / "ImageSets" / "Segmentation" / "val.txt"
    listing.write_text("a\n../../../etc/passwd\n")
    with pytest.raises(DataError,
                       match=r"val\.txt id '\.\./\.\./\.\./etc/passwd': path .* leaves the benchmark root"):
        voc_segmentation(voc)
    with pytest.raises(DataError, match="test.txt not found"):
        voc_segmentation(voc, "test")


def test_ade20k_layout(tmp_path):
    write_image(tmp_path / "images" / "validation" / "ADE_val_1.jpg")
    write_mask(tmp_path / "annotations" / "validation" / "ADE_val_1.png",
               np.kron(np.array([[0, 1], [3, 2]]), np.ones((24, 20), np.int64)))
    source = ade20k_segmentation(tmp_path, ("wall", "floor", "tree"))
    assert source.class_names == ("wall", "floor", "tree")
    _, labels = next(source.samples())
    assert [labels[0, 0], labels[0, -1], labels[-1, 0], labels[-1, -1]] == [255, 0, 2, 1]
    write_image(tmp_path / "images" / "validation" / "ADE_val_2.jpg")
    with pytest.raises(DataError, match=r"1 of 4 .*ADE_val_2\.png"):
        ade20k_segmentation(tmp_path, ("wall", "floor", "tree"))
    with pytest.raises(DataError, match="no images"):
        ade20k_segmentation(tmp_path, ("wall",), split="training")


def test_cityscapes_layout(tmp_path):
    stem = "aachen_000000_000019"
    write_image(tmp_path / "leftImg8bit" / "val" / "aachen" / f"{stem}_leftImg8bit.png", (64, 32), "PNG")
    train_ids = np.full((32, 64), 255, np.int64)
    train_ids[:, :32] = 13  # car
    write_mask(tmp_path / "gtFine" / "val" / "aachen" / f"{stem}_gtFine_labelTrainIds.png", train_ids)
    source = cityscapes_segmentation(tmp_path)
    assert len(source.class_names) == 19 and source.class_names[13] == "car"
    _, labels = next(source.samples())
    assert np.array_equal(labels, train_ids)
    with pytest.raises(ValueError, match="needs 'background'"):
        evaluate_segmentation(*micro_model("clip"), source, background_threshold=0.1)


def test_trivial_predictors_miou_from_the_labels_alone():
    """90 background pixels, 10 of class 1, none of class 2. All background: IoU 0.9 and 0 (class 2 neither
    present nor predicted: no IoU). Uniformly random: each class's expected intersection t/3 over its expected
    union 100/3 + t·2/3."""
    levels = trivial_miou(torch.tensor([90, 10, 0]))
    assert levels["majority"] == pytest.approx((0.9 + 0.0) / 2)
    assert levels["chance"] == pytest.approx((30 / (100 / 3 + 60) + (10 / 3) / (100 / 3 + 20 / 3) + 0) / 3)
