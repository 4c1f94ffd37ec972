"""Retrieval benchmark sources as `RetrievalTask`s: texts, which images answer each, and the images in order.

* `builtin_task(root, split, family)`: the built-in `fine_grained`, `long` and `standard` query sets
  (`<split>_queries.json`) over the `<split>` shards;
* `annotated_task(name, ds)`: a real benchmark's texts and images as read from its annotations
  (`flair_core/data/registry.py`'s `load_benchmark`).
"""

from __future__ import annotations

import io
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
import webdataset as wds
from PIL import Image

from flair_core.data.benchmarks import RetrievalSet
from flair_core.data.errors import DataError
from flair_core.data.files import decoded

BUILTIN_FAMILIES = ("fine_grained", "long", "standard")


@dataclass
class RetrievalTask:
    name: str
    texts: list[str]
    relevant: torch.Tensor  # bool (I, T): every image that answers each text
    strict: torch.Tensor | None  # bool (I, T): only each text's source image, where that differs
    images: Callable[[], Iterator[Image.Image]]  # the I images, in order
    num_images: int
    # Resampling units: images of one cluster (a built-in twin pair; elsewhere the image alone) are drawn
    # together, and each text with the image it was written for.
    image_cluster: torch.Tensor  # (I,) int
    text_source: torch.Tensor  # (T,) int: the image each text describes
    # For the diagnostics (`evaluation/diagnostics.py`), where the data knows them (built-in sets): each
    # text's fact type, each image's twin and what tells the two apart (the same for both of a pair).
    fact_type: tuple[str, ...] | None = None  # (T,)
    twin: torch.Tensor | None = None  # (I,) int
    twin_change: tuple[str, ...] | None = None  # (I,)

    @property
    def text_cluster(self) -> torch.Tensor:
        return self.image_cluster[self.text_source]


def relevance_matrix(num_images: int,
                     text_positives: list[list[int]] | list[tuple[int, ...]]) -> torch.Tensor:
    """bool (I, T): text t is relevant to every image in text_positives[t]."""
    relevant = torch.zeros(num_images, len(text_positives), dtype=torch.bool)
    for t, images in enumerate(text_positives):
        relevant[list(images), t] = True
    return relevant


def builtin_task(root: Path, split: str, family: str) -> RetrievalTask:
    queries_file = Path(root) / f"{split}_queries.json"
    if not queries_file.is_file():
        raise DataError(f"{queries_file} not found: generate the built-in data with `flair prepare`")
    queries = json.loads(queries_file.read_text())
    if family not in queries["sets"]:
        raise DataError(f"no built-in retrieval set {family!r} (known: {', '.join(queries['sets'])})")
    query_set, keys = queries["sets"][family], queries["images"]
    shards = sorted(str(p) for p in (Path(root) / split).glob("*.tar"))

    def images() -> Iterator[Image.Image]:
        seen = 0
        # Every image, in order, whoever calls: also rank 0 validating inside a torchrun group.
        for sample in wds.WebDataset(shards, shardshuffle=False, empty_check=False, nodesplitter=None,
                                     workersplitter=None):
            if sample["__key__"] != keys[seen]:
                raise DataError(f"{split} shards out of step with {queries_file.name}: {sample['__key__']}")
            yield Image.open(io.BytesIO(sample["png"])).convert("RGB")
            seen += 1
        if seen != len(keys):
            raise DataError(f"{split} shards hold {seen} of the {len(keys)} images {queries_file.name} names")

    relevant = relevance_matrix(len(keys), query_set["positives"])
    strict = relevance_matrix(len(keys), [[s] for s in query_set["source"]])
    index = torch.arange(len(keys))  # evaluation splits alternate a scene and its one-change twin
    # data generated before fact types and twin changes were recorded has no diagnostics
    fact_type = query_set.get("fact_type")
    changes = queries.get("twin_change")
    return RetrievalTask(f"builtin_{family}", query_set["texts"], relevant, strict, images, len(keys),
                         index // 2, torch.tensor(query_set["source"]),
                         fact_type=tuple(fact_type) if fact_type else None,
                         twin=index ^ 1 if changes else None,
                         twin_change=tuple(c for c in changes for _ in range(2)) if changes else None)


def annotated_task(name: str, ds: RetrievalSet) -> RetrievalTask:
    relevant = relevance_matrix(len(ds.image_paths), ds.text_positives or [[i] for i in ds.text_image])
    return RetrievalTask(name, list(ds.texts), relevant, None, lambda: decoded(name, ds.image_paths),
                         len(ds.image_paths), torch.arange(len(ds.image_paths)), torch.tensor(ds.text_image))
