"""Segmentation benchmark sources: each returns a `SegmentationSource`; missing files fail before any compute.

* `builtin_segmentation(root, split)`: `<split>/shard-*.tar` with `<key>.png` and `<key>.seg.png`;
* `voc_segmentation(root, split, background=True)`: `JPEGImages/<id>.jpg`, `SegmentationClass/<id>.png`
  (palette), ids from `ImageSets/Segmentation/<split>.txt`; without background ("VOC20") it is ignored;
* `ade20k_segmentation(root, class_names, split)`: `images/<split>/*.jpg`, `annotations/<split>/<stem>.png`,
  label 0 = ignore, 1..N = `class_names`;
* `cityscapes_segmentation(root, split)`: `leftImg8bit/<split>/<city>/*_leftImg8bit.png`,
  `gtFine/<split>/<city>/*_gtFine_labelTrainIds.png`, the 19 train ids.

Labels are remapped to 0..C-1 with 255 = ignore.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from flair_core.data.classification_sets import read_meta, read_shards, shard_samples
from flair_core.data.errors import DataError
from flair_core.data.files import check_images, decoded, inside

IGNORE = 255
VOC_CLASSES = ("background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair",
               "cow", "dining table", "dog", "horse", "motorbike", "person", "potted plant", "sheep", "sofa",
               "train", "tv monitor")
CITYSCAPES_CLASSES = ("road", "sidewalk", "building", "wall", "fence", "pole", "traffic light",
                      "traffic sign", "vegetation", "terrain", "sky", "person", "rider", "car", "truck",
                      "bus", "train", "motorcycle", "bicycle")


@dataclass(frozen=True)
class SegmentationSource:
    name: str
    class_names: tuple[str, ...]
    samples: Callable[[], Iterator[tuple[Image.Image, np.ndarray]]]  # RGB image, labels (H, W) int64
    num_images: int


def _mask(path_or_bytes: Path | bytes, remap: Callable[[np.ndarray], np.ndarray] | None) -> np.ndarray:
    raw = io.BytesIO(path_or_bytes) if isinstance(path_or_bytes, bytes) else path_or_bytes
    labels = np.asarray(Image.open(raw), dtype=np.int64)  # palette PNGs read as their indices
    if labels.ndim != 2:
        raise DataError(f"{path_or_bytes if isinstance(path_or_bytes, Path) else 'mask'} is not a "
                        f"class-index PNG (shape {labels.shape})")
    return remap(labels) if remap else labels


def folder_source(name: str, classes: Sequence[str], pairs: list[tuple[Path, Path]],
                  remap: Callable[[np.ndarray], np.ndarray] | None = None) -> SegmentationSource:
    """(image, mask) file pairs; every file must be a usable image (one-line DataError naming the count and
    the first, before any compute)."""
    if not pairs:
        raise DataError(f"{name}: no images found")
    check_images(name, [p for pair in pairs for p in pair], "image/mask files")

    def samples() -> Iterator[tuple[Image.Image, np.ndarray]]:
        images = decoded(name, (image for image, _ in pairs))
        for image, (_, mask) in zip(images, pairs, strict=True):
            yield image, _mask(mask, remap)

    return SegmentationSource(name, tuple(classes), samples, len(pairs))


def builtin_segmentation(root: str | Path, split: str = "test") -> SegmentationSource:
    """Built-in val/test scenes; classes = meta.json `classes` (background, then the shapes)."""
    root = Path(root)
    classes = tuple(read_meta(root)["classes"])
    shards, count = shard_samples(root / split, ("png", "seg.png"))

    def samples() -> Iterator[tuple[Image.Image, np.ndarray]]:
        for s in read_shards(shards):
            yield Image.open(io.BytesIO(s["png"])).convert("RGB"), _mask(s["seg.png"], None)

    return SegmentationSource(f"builtin_{split}", classes, samples, count)


def voc_segmentation(root: str | Path, split: str = "val", background: bool = True) -> SegmentationSource:
    """PASCAL VOC 2012 layout; 255 (object borders) is ignored. background=False is "VOC20"."""
    root = Path(root)
    listing = root / "ImageSets" / "Segmentation" / f"{split}.txt"
    if not listing.is_file():
        raise DataError(f"{listing} not found")
    ids = [line.strip() for line in listing.read_text().splitlines() if line.strip()]
    pairs = [(inside(root / "JPEGImages", f"{i}.jpg", f"{listing} id {i!r}"),
              inside(root / "SegmentationClass", f"{i}.png", f"{listing} id {i!r}")) for i in ids]
    if background:
        return folder_source(f"voc_{split}", VOC_CLASSES, pairs)
    return folder_source(f"voc20_{split}", VOC_CLASSES[1:], pairs,
                         lambda m: np.where((m == 0) | (m == IGNORE), IGNORE, m - 1))


def ade20k_segmentation(root: str | Path, class_names: Sequence[str], split: str = "validation"
                        ) -> SegmentationSource:
    """ADEChallengeData2016 layout; mask 0 is ignored, k >= 1 is class_names[k - 1]."""
    root = Path(root)
    images = sorted((root / "images" / split).glob("*.jpg"))
    pairs = [(p, root / "annotations" / split / f"{p.stem}.png") for p in images]
    return folder_source(f"ade20k_{split}", class_names, pairs, lambda m: np.where(m == 0, IGNORE, m - 1))


def cityscapes_segmentation(root: str | Path, split: str = "val") -> SegmentationSource:
    """Cityscapes fine annotations as train ids (19 classes, 255 ignored)."""
    root = Path(root)
    images = sorted((root / "leftImg8bit" / split).glob("*/*_leftImg8bit.png"))
    pairs = [(p, root / "gtFine" / split / p.parent.name
              / p.name.replace("_leftImg8bit.png", "_gtFine_labelTrainIds.png")) for p in images]
    return folder_source(f"cityscapes_{split}", CITYSCAPES_CLASSES, pairs)
