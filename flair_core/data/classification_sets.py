"""Classification benchmark sources: each returns a `ClassificationSource` whose images stream in a fixed
order.

* `builtin_classification(root)`: the built-in `classification/shard-*.tar` (`<key>.png`, `<key>.cls` = shape
  index); class names are `meta.json` `classes` minus "background".
* `imagefolder_classification(root)`: `root/<class_name>/*.{jpg,jpeg,png}`; classes are the sorted folder
  names with underscores read as spaces.

Shards are checked from their tar headers (`shard_samples`) before any image is decoded.
"""

from __future__ import annotations

import io
import json
import tarfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from flair_core.data.errors import DataError
from flair_core.data.files import check_images, decoded

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")


@dataclass(frozen=True)
class ClassificationSource:
    name: str
    class_names: tuple[str, ...]
    samples: Callable[[], Iterator[tuple[Image.Image, int]]]  # (RGB image, class index), in a fixed order
    num_images: int


def read_meta(root: Path) -> dict:
    meta = Path(root) / "meta.json"
    if not meta.is_file():
        raise DataError(f"{meta} not found: generate the built-in data with `flair prepare`")
    return json.loads(meta.read_text())


def shard_samples(folder: Path, required: Sequence[str]) -> tuple[list[Path], int]:
    """The shards of a folder and their sample count; every sample must hold each `required` extension.

    Scans tar headers only, so missing parts fail before any compute.
    """
    shards = sorted(Path(folder).glob("*.tar"))
    if not shards:
        raise DataError(f"no shards (*.tar) in {folder}")
    parts: dict[str, set[str]] = {}
    for shard in shards:
        with tarfile.open(shard) as tar:
            for name in tar.getnames():
                # webdataset's convention: key up to the first dot
                key, _, ext = Path(name).name.partition(".")
                parts.setdefault(f"{shard}:{key}", set()).add(ext)
    missing = [key for key, exts in parts.items() if not set(required) <= exts]
    if missing:
        raise DataError(f"{len(missing)} of {len(parts)} samples lack one of {'/'.join(required)}, "
                        f"first: {missing[0]}")
    return shards, len(parts)


def read_shards(shards: Sequence[Path]) -> Iterator[dict[str, bytes]]:
    """Samples {ext: bytes, "__key__": key} in shard order (a sample's members are contiguous in a shard)."""
    for shard in shards:
        sample: dict = {}
        with tarfile.open(shard) as tar:
            for member in tar:
                if not member.isfile():
                    continue
                key, _, ext = Path(member.name).name.partition(".")
                if sample and sample["__key__"] != key:
                    yield sample
                    sample = {}
                sample["__key__"] = key
                sample[ext] = tar.extractfile(member).read()
        if sample:
            yield sample


def builtin_classification(root: str | Path) -> ClassificationSource:
    """The built-in single-object images; label = shape index (class names without "background")."""
    root = Path(root)
    classes = tuple(c for c in read_meta(root)["classes"] if c != "background")
    shards, count = shard_samples(root / "classification", ("png", "cls"))

    def samples() -> Iterator[tuple[Image.Image, int]]:
        for s in read_shards(shards):
            yield Image.open(io.BytesIO(s["png"])).convert("RGB"), int(s["cls"].decode())

    return ClassificationSource("builtin", classes, samples, count)


def imagefolder_classification(root: str | Path, name: str | None = None) -> ClassificationSource:
    """ImageFolder layout `root/<class_name>/<image>`; classes sorted by folder name, "_" read as " "."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"image folder {root} does not exist")
    folders = sorted(p for p in root.iterdir() if p.is_dir())
    items = [(path, label) for label, folder in enumerate(folders) for path in sorted(folder.iterdir())
             if path.suffix.lower() in IMAGE_SUFFIXES]
    if not items:
        raise DataError(f"no images (*.jpg, *.png) in class folders under {root}")
    label = name or root.name
    check_images(label, [path for path, _ in items])

    def samples() -> Iterator[tuple[Image.Image, int]]:
        yield from zip(decoded(label, (path for path, _ in items)), (lab for _, lab in items), strict=True)

    classes = tuple(f.name.replace("_", " ") for f in folders)
    return ClassificationSource(label, classes, samples, len(items))
