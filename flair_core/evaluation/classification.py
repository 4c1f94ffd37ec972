"""Zero-shot classification: image global embedding vs prompt-ensembled class embeddings.

Data sources (each returns a `ClassificationSource`):
* `builtin_classification(root)`: the built-in `classification/shard-*.tar` (`<key>.png`, `<key>.cls` = shape
  index); class names are `meta.json` `classes` minus "background".
* `imagefolder_classification(root)`: `root/<class_name>/*.{jpg,jpeg,png}`; classes are the sorted folder
  names with underscores read as spaces.

Top-k accuracy is a pure function of (scores, labels), separate from embedding.
"""

from __future__ import annotations

import io
import json
import tarfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from PIL import Image

from flair_core.data.errors import DataError
from flair_core.evaluation.templates import CLIP_BEST, batched, class_text_embeddings

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")


@dataclass(frozen=True)
class ClassificationSource:
    name: str
    class_names: tuple[str, ...]
    samples: Callable[[], Iterator[tuple[Image.Image, int]]]  # (RGB image, class index), in a fixed order
    num_images: int


def topk_accuracy(scores: torch.Tensor, labels: torch.Tensor, ks: Sequence[int] = (1, 5)) -> dict[int, float]:
    """scores (N, C), labels (N,) -> {k: fraction of rows whose label is among the k best classes}.

    k is capped at C (top-5 over 3 classes is 1.0); ties fall to torch.topk's order.
    """
    if scores.ndim != 2 or labels.shape != scores.shape[:1] or scores.shape[0] == 0:
        raise ValueError(f"expected scores (N, C) and labels (N,), N > 0; got {tuple(scores.shape)}, "
                         f"{tuple(labels.shape)}")
    best = scores.topk(min(max(ks), scores.shape[1]), dim=1).indices  # (N, k_max), best first
    hit = best == labels[:, None]
    return {k: hit[:, : min(k, scores.shape[1])].any(dim=1).float().mean().item() for k in ks}


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
                key, _, ext = Path(name).name.partition(".")  # webdataset's convention: key up to the first dot
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

    def samples() -> Iterator[tuple[Image.Image, int]]:
        for path, label in items:
            yield Image.open(path).convert("RGB"), label

    classes = tuple(f.name.replace("_", " ") for f in folders)
    return ClassificationSource(name or root.name, classes, samples, len(items))


CLASSIFICATION_SOURCES = {"builtin": builtin_classification, "imagefolder": imagefolder_classification}


@torch.no_grad()
def image_embeddings(model, images: torch.Tensor) -> torch.Tensor:
    """images (B, 3, H, W) -> normalised global embeddings (B, D), fp32."""
    return F.normalize(model.image_post(model.encode_image(images)[0]).float(), dim=-1)


@torch.no_grad()
def evaluate_classification(model, tokenizer: Callable, transform: Callable, source: ClassificationSource,
                            templates: str | Sequence[str] = CLIP_BEST, batch_size: int = 64,
                            device: str | torch.device = "cpu") -> dict:
    """Top-1/top-5 accuracy of cosine(image, class) arg-max. The model must already be on `device`."""
    model.eval()
    classes = class_text_embeddings(model, tokenizer, source.class_names, templates, device=device)  # (C, D)
    scores, labels = [], []
    for batch in batched(source.samples(), batch_size):
        images = torch.stack([transform(image) for image, _ in batch]).to(device)
        scores.append((image_embeddings(model, images) @ classes.T).cpu())  # (B, C)
        labels.extend(label for _, label in batch)
    if not labels:
        raise DataError(f"{source.name}: no images")
    accuracy = topk_accuracy(torch.cat(scores), torch.tensor(labels), (1, 5))
    return {"top1": accuracy[1], "top5": accuracy[5], "num_images": len(labels),
            "num_classes": len(source.class_names)}
