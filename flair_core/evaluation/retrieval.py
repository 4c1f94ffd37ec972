"""Retrieval evaluation: one benchmark per call, every scoring mode the model's method offers.

Metric names are `retrieval/<benchmark>/<mode>/<metric>` (e.g. `retrieval/builtin_fine_grained/flair/t2i_r1`);
where a benchmark's texts have several correct images (the built-in sets), the strict single-image variant is
reported beside it as `strict_t2i_r1` etc. Every recall also has `_ci_low`, `_ci_high` and `_chance` (metrics.py).
"""

from __future__ import annotations

import io
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
import webdataset as wds
from PIL import Image

from flair_core.data.benchmarks import BENCHMARKS, load_benchmark
from flair_core.data.errors import DataError
from flair_core.evaluation import scores
from flair_core.evaluation.metrics import non_finite, relevance_matrix, retrieval_metrics
from flair_core.evaluation.templates import batched

BUILTIN_FAMILIES = ("fine_grained", "long", "standard")
MODES = {"flair": ("global", "flair", "topk"), "clip": ("global",), "dreamlip": ("global",),
         "filip": ("filip", "global")}
PRIMARY_MODE = {"flair": "flair", "clip": "global", "dreamlip": "global", "filip": "filip"}  # the method's own


class EvaluationError(ValueError):
    """Scores that cannot be ranked (NaN/inf): an error naming benchmark, mode and count, never a metric."""


def check_finite(benchmark: str, mode: str, i2t: torch.Tensor, t2i: torch.Tensor) -> None:
    matrices = [i2t] if i2t is t2i else [i2t, t2i]  # global and flair modes rank both directions by one matrix
    bad = sum(non_finite(m) for m in matrices)
    if bad:
        total = sum(m.numel() for m in matrices)
        raise EvaluationError(f"{benchmark}, {mode} mode: {bad} of {total} scores are not finite (NaN/inf); "
                              "no metric reported (are the model's weights finite?)")


@dataclass
class RetrievalTask:
    name: str
    texts: list[str]
    relevant: torch.Tensor  # bool (I, T): every image that answers each text
    strict: torch.Tensor | None  # bool (I, T): only each text's source image, where that differs
    images: Callable[[], Iterator[Image.Image]]  # the I images, in order
    num_images: int


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
    return RetrievalTask(f"builtin_{family}", query_set["texts"], relevant, strict, images, len(keys))


def benchmark_task(name: str, root: Path, split: str | None = None) -> RetrievalTask:
    ds = load_benchmark(name, root, split, check_images=True)  # missing images fail here, before compute
    relevant = relevance_matrix(len(ds.image_paths), ds.text_positives or [[i] for i in ds.text_image])
    return RetrievalTask(name, list(ds.texts), relevant, None,
                         lambda: (Image.open(p).convert("RGB") for p in ds.image_paths), len(ds.image_paths))


def load_task(benchmark: str, root: str | Path, split: str | None = None) -> RetrievalTask:
    if not Path(root).is_dir():
        raise DataError(f"benchmark root {root} does not exist")
    if benchmark.startswith("builtin_"):
        return builtin_task(Path(root), split or "test", benchmark.removeprefix("builtin_"))
    if benchmark not in BENCHMARKS:
        known = ", ".join([f"builtin_{f}" for f in BUILTIN_FAMILIES] + sorted(BENCHMARKS))
        raise DataError(f"unknown benchmark {benchmark!r} (known: {known})")
    return benchmark_task(benchmark, Path(root), split)


@torch.no_grad()
def encode(model, tokenizer: Callable, transform: Callable, task: RetrievalTask, method: str,
           batch_size: int = 64, device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    """Projected image features/tokens and text features (FILIP: normalised tokens and masks)."""
    model.eval()
    parts: dict[str, list[torch.Tensor]] = {}

    def add(key: str, value: torch.Tensor) -> None:
        parts.setdefault(key, []).append(value.float().cpu() if value.is_floating_point() else value.cpu())

    for batch in batched(task.images(), batch_size):
        images = torch.stack([transform(im) for im in batch]).to(device)
        image_global, image_local = model.encode_image(images)
        if method == "filip":
            add("image_tokens", F.normalize(model.image_post(image_local), dim=-1))
        elif method == "flair":
            add("image_tokens", model.image_post(image_local))
        add("image_features", model.image_post(image_global))
    for start in range(0, len(task.texts), batch_size):
        ids = tokenizer(task.texts[start : start + batch_size]).to(device)
        text_global, text_local = model.encode_text(ids)
        add("text_features", model.text_post(text_global))
        if method == "filip":
            local = F.pad(text_local, (0, 0, 0, ids.shape[1] - text_local.shape[1]))
            add("text_tokens", F.normalize(model.text_post(local), dim=-1))
            add("text_mask", ids != 0)
    features = {k: torch.cat(v) for k, v in parts.items()}
    features["logit_scale"] = model.logit_scale.exp().detach().float().cpu()
    return features


def score(model, features: dict, mode: str, topk: int = 128, dtype: torch.dtype | None = None,
          budget_mb: float = 512) -> tuple[torch.Tensor, torch.Tensor]:
    """(i2t, t2i) score matrices (I, T) for one mode."""
    s = features["logit_scale"]
    if mode == "global":
        g = scores.global_scores(features["image_features"], features["text_features"], s)
        return g, g
    if mode == "flair":
        f = scores.flair_scores(model.visual_proj, features["image_tokens"], features["text_features"], s,
                                dtype=dtype, budget_mb=budget_mb)
        return f, f
    if mode == "topk":
        return scores.topk_scores(model.visual_proj, features["image_features"], features["image_tokens"],
                                  features["text_features"], s, topk)
    if mode == "filip":
        return scores.filip_scores(features["image_tokens"], features["text_tokens"], features["text_mask"], s)
    raise ValueError(f"unknown retrieval mode {mode!r}")


def evaluate_retrieval(model, method: str, tokenizer: Callable, transform: Callable, task: RetrievalTask,
                       modes: tuple[str, ...] | None = None, topk: int = 128, dtype: torch.dtype | None = None,
                       budget_mb: float = 512, batch_size: int = 64, device: str = "cpu") -> dict[str, float]:
    modes = modes or MODES[method]
    unknown = [m for m in modes if m not in MODES[method]]
    if unknown:
        raise ValueError(f"mode {unknown[0]!r} is not available for {method} (available: {', '.join(MODES[method])})")
    if "topk" in modes and topk > min(task.num_images, len(task.texts)):
        raise ValueError(f"top-k {topk} is larger than the gallery ({task.num_images} images, {len(task.texts)} texts)")
    features = encode(model, tokenizer, transform, task, method, batch_size, device)
    metrics = {}
    for mode in modes:
        i2t, t2i = score(model, features, mode, topk, dtype, budget_mb)
        check_finite(task.name, mode, i2t, t2i)
        prefix = f"retrieval/{task.name}/{mode}"
        metrics.update({f"{prefix}/{k}": v for k, v in retrieval_metrics(i2t, t2i, task.relevant).items()})
        if task.strict is not None:
            strict = retrieval_metrics(i2t, t2i, task.strict)
            metrics.update({f"{prefix}/strict_{k}": v for k, v in strict.items()})
    metrics[f"retrieval/{task.name}/num_images"] = task.num_images
    metrics[f"retrieval/{task.name}/num_texts"] = len(task.texts)
    return metrics
