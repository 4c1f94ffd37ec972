"""The benchmark registry: one `Benchmark` entry per benchmark (family, loader, splits, default split),
read by `flair evaluate` and `flair benchmarks`, validation during training and the flows' default benchmarks.

A loader is `(root, split, options) -> the family's source` (a `RetrievalTask`, `SegmentationSource` or
`ClassificationSource`); `options` are the evaluation's options, which only ADE20K reads (its class names).
A real retrieval benchmark gives a reader `(root, split) -> RetrievalSet` instead (`data/benchmarks.py`):
`load_benchmark` resolves the split, confines the root and checks every image before any compute.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from flair_core.data import benchmarks as readers
from flair_core.data.benchmarks import RetrievalSet
from flair_core.data.classification_sets import builtin_classification, imagefolder_classification
from flair_core.data.errors import DataError
from flair_core.data.files import check_images as check_images_of
from flair_core.data.retrieval_sets import BUILTIN_FAMILIES, RetrievalTask, annotated_task, builtin_task
from flair_core.data.segmentation_sets import (
    ade20k_segmentation,
    builtin_segmentation,
    cityscapes_segmentation,
    voc_segmentation,
)

Family = Literal["retrieval", "segmentation", "classification"]
Loader = Callable[[Path, "str | None", Any], object]
Reader = Callable[[Path, str], RetrievalSet]


@dataclass(frozen=True)
class Benchmark:
    name: str
    family: Family
    load: Loader | None = None  # None for a real retrieval benchmark: built from its reader
    splits: tuple[str, ...] | None = None  # None: whichever split the loader finds on disk
    default_split: str | None = None  # None: the first of `splits`, else the loader's own
    read: Reader | None = None  # a real retrieval benchmark's annotation reader

    def __post_init__(self) -> None:
        if self.load is None and self.read is None:
            raise ValueError(f"benchmark {self.name!r}: give a loader or a retrieval reader")
        if self.default_split is None and self.splits:
            object.__setattr__(self, "default_split", self.splits[0])
        if self.read is not None:  # always from this entry: a dataclasses.replace copy reads its own reader
            object.__setattr__(self, "load", lambda root, split, _: _annotated(self, root, split))

    def split(self, split: str | None) -> str | None:
        """The split to load: the given one if known (any, where splits are not fixed), else the default."""
        split = self.default_split if split is None else split
        if self.splits is not None and split not in self.splits:
            raise DataError(f"{self.name}: unknown split {split!r}; known: {', '.join(self.splits)}")
        return split


def _builtin_retrieval(family: str) -> Benchmark:
    return Benchmark(f"builtin_{family}", "retrieval",
                     lambda root, split, _: builtin_task(root, split, family), default_split="test")


def _real(name: str, read: Reader, splits: tuple[str, ...] = ("test",)) -> Benchmark:
    return Benchmark(name, "retrieval", read=read, splits=splits)


BENCHMARKS: dict[str, Benchmark] = {b.name: b for b in (
    *(_builtin_retrieval(f) for f in BUILTIN_FAMILIES),
    _real("coco", readers.coco, ("val2017",)),
    _real("coco_karpathy_5k", readers.coco_karpathy),
    # the original reports the 1,014-image "val" split; its 1k "test" split loads too
    _real("flickr30k", readers.flickr30k, ("val", "test")),
    _real("docci_fg", readers.annotation_list("docci_fg", "annotations/test_annotations.json", "images")),
    _real("iiw_fg", readers.annotation_list("iiw_fg", "test_annotations.json", ".")),
    _real("urban1k", readers.annotation_list("urban1k", "annotations/annotations.json", "images")),
    _real("dci", readers.dci, ("all",)),  # train+valid+test, as the long-caption protocol evaluates it
    _real("sharegpt4v_1k", readers.sharegpt4v(1_000)),
    _real("sharegpt4v_10k", readers.sharegpt4v(10_000)),
    Benchmark("builtin_segmentation", "segmentation",
              lambda root, split, _: builtin_segmentation(root, split), default_split="test"),
    Benchmark("voc", "segmentation", lambda root, split, _: voc_segmentation(root, split, background=True),
              default_split="val"),
    Benchmark("voc20", "segmentation",  # VOC without its background class
              lambda root, split, _: voc_segmentation(root, split, background=False), default_split="val"),
    # ADE20K's folders carry no class names: they come from the options (`--class-name`, in label order)
    Benchmark("ade20k", "segmentation",
              lambda root, split, options: ade20k_segmentation(root, options.class_names, split),
              default_split="validation"),
    Benchmark("cityscapes", "segmentation", lambda root, split, _: cityscapes_segmentation(root, split),
              default_split="val"),
    Benchmark("builtin_classification", "classification",
              lambda root, split, _: builtin_classification(root)),
    Benchmark("imagefolder", "classification",  # root/<class>/<image>; a split names a subfolder
              lambda root, split, _: imagefolder_classification(root / split if split else root)),
)}


def register(benchmark: Benchmark) -> Benchmark:
    """Add a benchmark defined outside this module (e.g. a plug-in or a test's toy benchmark)."""
    if benchmark.name in BENCHMARKS:
        raise ValueError(f"benchmark {benchmark.name!r} is already registered")
    BENCHMARKS[benchmark.name] = benchmark
    return benchmark


def benchmark_names(family: str | None = None) -> list[str]:
    return [name for name, b in BENCHMARKS.items() if family in (None, b.family)]


def get_benchmark(name: str) -> Benchmark:
    if name not in BENCHMARKS:
        raise DataError(f"unknown benchmark {name!r}; known: {', '.join(BENCHMARKS)}")
    return BENCHMARKS[name]


def load_benchmark(name: str, root: str | Path, split: str | None = None,
                   check_images: bool = True) -> RetrievalSet:
    """A real retrieval benchmark's texts and images; with `check_images`, fail now (not mid-evaluation) if
    any image is missing, empty or not an image."""
    return _read(get_benchmark(name), root, split, check_images)


def _read(benchmark: Benchmark, root: str | Path, split: str | None, check_images: bool) -> RetrievalSet:
    if benchmark.read is None:
        raise DataError(f"{benchmark.name} is a {benchmark.family} benchmark read by its loader, not from "
                        "retrieval annotations")
    split = benchmark.split(split)
    # abspath normalises '.', '..' and a trailing slash without following symlinks (Flickr uses root.parent).
    root = Path(os.path.abspath(os.fspath(root)))
    if not root.is_dir():
        raise DataError(f"{benchmark.name}: dataset root {root} does not exist or is not a directory")
    ds = benchmark.read(root, split)
    if check_images:
        check_images_of(benchmark.name, ds.image_paths)
    return ds


def _annotated(benchmark: Benchmark, root: Path, split: str | None) -> RetrievalTask:
    return annotated_task(benchmark.name, _read(benchmark, root, split, check_images=True))
