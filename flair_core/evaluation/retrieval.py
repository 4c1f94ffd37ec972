"""Retrieval evaluation: one benchmark per call, every scoring mode the model's method offers (its registry
entry names them; its model scores them).

Metric names are `retrieval/<benchmark>/<mode>/<metric>` (e.g. `retrieval/builtin_fine_grained/flair/t2i_r1`);
where a benchmark's texts have several correct images (the built-in sets), the strict single-image variant is
reported beside it as `strict_t2i_r1` etc. Every recall also has `_ci_low`, `_ci_high` and `_chance`
(metrics.py). Each query's rank is kept too, with its cluster, so that two evaluations can be compared query
by query. Where the task knows its fact types and twins (the built-in sets), R@1 by fact type and
minimal-pair accuracy are added (`diagnostics.py`).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from flair_core import inference
from flair_core.data.retrieval_sets import RetrievalTask
from flair_core.evaluation import diagnostics
from flair_core.evaluation.headline import metric_key
from flair_core.evaluation.metrics import check_finite, retrieval_metrics
from flair_core.methods import method_of


def encode(model, tokenizer: Callable, transform: Callable, task: RetrievalTask, batch_size: int = 64
           ) -> dict[str, torch.Tensor]:
    """Every image and text of the task embedded as the model's method scores them, on the CPU, +
    logit_scale."""
    features = {**inference.embed_images(model, task.images(), batch_size, transform),
                **inference.embed_texts(model, task.texts, batch_size, tokenizer)}
    features["logit_scale"] = model.logit_scale.exp().detach().float().cpu()
    return features


def evaluate_retrieval(model, tokenizer: Callable, transform: Callable, task: RetrievalTask,
                       modes: tuple[str, ...] | None = None, topk: int = 128,
                       dtype: torch.dtype | None = None, budget_mb: float = 512, batch_size: int = 64,
                       with_diagnostics: bool = True) -> tuple[dict[str, float], dict[str, np.ndarray]]:
    """Every requested mode (default: all the model's method offers) on one task -> metrics and per-query
    records (`records.py`). The model must be on its device already (images and texts are embedded there,
    scored on the CPU). `with_diagnostics` False leaves the diagnostics' metrics out (their records stay)."""
    method = method_of(model)
    modes = modes or method.retrieval_modes
    unknown = [m for m in modes if m not in method.retrieval_modes]
    if unknown:
        raise ValueError(f"mode {unknown[0]!r} is not available for {method.name} "
                         f"(available: {', '.join(method.retrieval_modes)})")
    if "topk" in modes and topk > min(task.num_images, len(task.texts)):
        raise ValueError(f"top-k {topk} is larger than the gallery ({task.num_images} images, "
                         f"{len(task.texts)} texts)")
    features = encode(model, tokenizer, transform, task, batch_size)
    metrics, records = {}, {}
    variants = {"": task.relevant} | ({"strict_": task.strict} if task.strict is not None else {})
    pairs = diagnostics.minimal_pairs(task)
    for mode in modes:
        i2t, t2i = model.retrieval_scores(features, mode, topk, dtype, budget_mb)
        check_finite(task.name, mode, *([i2t] if i2t is t2i else [i2t, t2i]))  # one matrix: both directions
        if pairs:
            pairs[f"{mode}/pair/margin"] = diagnostics.pair_margins(t2i, task, pairs["pair/query"])
        for variant, relevant in variants.items():
            found, ranked = retrieval_metrics(i2t, t2i, relevant, task.image_cluster, task.text_cluster)
            metrics.update({metric_key("retrieval", task.name, mode, f"{variant}{k}"): v
                            for k, v in found.items()})
            for direction, queries in ranked.items():
                records |= {f"{variant}{direction}/query": queries.query, f"{variant}{direction}/cluster":
                            queries.cluster, f"{mode}/{variant}{direction}/rank": queries.rank}
    metrics[metric_key("retrieval", task.name, None, "num_images")] = task.num_images
    metrics[metric_key("retrieval", task.name, None, "num_texts")] = len(task.texts)
    records = {k: v.numpy() for k, v in records.items()} | pairs
    if task.fact_type is not None:
        records["text/fact_type"] = np.array(task.fact_type)
    if with_diagnostics:
        metrics |= diagnostics.diagnostic_metrics(records, task, modes)
    return metrics, records
