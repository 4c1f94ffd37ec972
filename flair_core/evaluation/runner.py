"""The one call that evaluates a model on a benchmark (`flair evaluate`, validation during training and the
orchestrators all use `evaluate_benchmark`, or `run_benchmark` for its metrics alone).

A benchmark is an entry of the registry (`flair_core/data/registry.py`): its family, loader, splits and
default split. One evaluator per family turns the loaded source into flat metrics named
`<family>/<benchmark>/<mode>/<metric>`, and per-query records (`records.py`); scoring modes default to what
the model's method offers. Every headline metric carries its 95 % interval (retrieval: clusters of queries;
segmentation and classification: images) and its reference levels: `_chance` (a random ranking, a uniformly
random class) and, where the labels give one, `_majority` (always the most frequent class).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from flair_core.data.errors import DataError
from flair_core.data.registry import get_benchmark
from flair_core.evaluation import CHANCE, CI_HIGH, CI_LOW, MAJORITY, stats
from flair_core.evaluation.classification import evaluate_classification
from flair_core.evaluation.headline import metric_key
from flair_core.evaluation.metrics import EvaluationError, non_finite_metrics
from flair_core.evaluation.records import outcomes
from flair_core.evaluation.retrieval import evaluate_retrieval
from flair_core.evaluation.segmentation import evaluate_segmentation
from flair_core.methods import method_of
from flair_core.preprocess import get_tokenizer, get_transform


@dataclass(frozen=True)
class EvalOptions:
    modes: tuple[str, ...] = ()  # () = every mode the model's method offers for the family
    topk: int = 128
    dtype: torch.dtype = torch.float32
    budget_mb: float = 512
    background_threshold: float | None = None
    class_names: tuple[str, ...] = ()  # ADE20K-style folders name their classes here
    device: str = "cpu"
    diagnostics: bool = True  # built-in retrieval: R@1 by fact type, minimal-pair accuracy (diagnostics.py)


Records = dict[str, np.ndarray]


@dataclass(frozen=True)
class Evaluation:
    metrics: dict[str, float]
    records: Records  # per-query results (`records.py`)


def _retrieval(model, name, source, tokenizer, transform, options: EvalOptions) -> Evaluation:
    return Evaluation(*evaluate_retrieval(model, tokenizer, transform, source, options.modes or None,
                                          options.topk, options.dtype, options.budget_mb,
                                          with_diagnostics=options.diagnostics))


def _image_units(count: int) -> Records:
    """Segmentation and classification resample whole images: each image its own cluster."""
    return {"image": np.arange(count), "cluster": np.arange(count)}


def _with_interval(metrics: dict[str, float], key: str, units: stats.Outcomes) -> None:
    estimate = stats.estimate([units])
    metrics |= {key + CI_LOW: estimate.low, key + CI_HIGH: estimate.high}


def _segmentation(model, name, source, tokenizer, transform, options: EvalOptions) -> Evaluation:
    metrics, records = {}, {}
    for mode in options.modes or method_of(model).segmentation_modes:
        result = evaluate_segmentation(model, tokenizer, transform, source, mode=mode,
                                       background_threshold=options.background_threshold,
                                       device=options.device)
        records |= _image_units(result["num_images"]) | {f"{mode}/intersection": result["intersection"],
                                                         f"{mode}/union": result["union"]}
        miou = metric_key("segmentation", name, mode, "miou")
        metrics.update({metric_key("segmentation", name, mode, m): 100 * result[m]
                        for m in ("miou", "pixel_accuracy")})
        metrics |= {miou + CHANCE: 100 * result["miou_chance"],
                    miou + MAJORITY: 100 * result["miou_majority"]}
        _with_interval(metrics, miou, outcomes(records, f"{mode}/miou"))
        metrics.update({metric_key("segmentation", name, mode, f"iou/{cls}"): 100 * value
                        for cls, value in result["iou"].items()})
    metrics[metric_key("segmentation", name, None, "num_images")] = source.num_images
    return Evaluation(metrics, records)


def _classification(model, name, source, tokenizer, transform, options: EvalOptions) -> Evaluation:
    result = evaluate_classification(model, tokenizer, transform, source, device=options.device)
    records = {**_image_units(result["num_images"]), "label": result["labels"],
               "zeroshot/correct": result["correct"]}
    metrics = {metric_key("classification", name, "zeroshot", m): 100 * result[m]
               for m in ("top1", "top5", "top1_chance", "top5_chance", "top1_majority")}
    _with_interval(metrics, metric_key("classification", name, "zeroshot", "top1"),
                   outcomes(records, "zeroshot/top1"))
    metrics[metric_key("classification", name, None, "num_images")] = result["num_images"]
    return Evaluation(metrics, records)


EVALUATORS = {"retrieval": _retrieval, "segmentation": _segmentation, "classification": _classification}


def evaluate_benchmark(model, benchmark: str, root: str | Path, split: str | None = None,
                       options: EvalOptions = EvalOptions()) -> Evaluation:
    """One benchmark: its metrics (each headline metric with its interval and reference levels) and per-query
    records."""
    spec = get_benchmark(benchmark)
    if not Path(root).is_dir():
        raise DataError(f"benchmark root {root} does not exist")
    source = spec.load(Path(root), spec.split(split), options)  # missing files fail here, before compute
    model.to(options.device)
    tokenizer, transform = get_tokenizer(model.config), get_transform(model.config, train=False)
    evaluation = EVALUATORS[spec.family](model, benchmark, source, tokenizer, transform, options)
    bad = non_finite_metrics(evaluation.metrics)
    if bad:  # the last line of defence: a metric that is not a number is never reported
        raise EvaluationError(f"{benchmark}: {len(bad)} metrics are not finite, first: {bad[0]} = "
                              f"{evaluation.metrics[bad[0]]}")
    return evaluation


def run_benchmark(model, benchmark: str, root: str | Path, split: str | None = None,
                  options: EvalOptions = EvalOptions()) -> dict[str, float]:
    """`evaluate_benchmark`'s metrics alone (validation during training keeps no records)."""
    return evaluate_benchmark(model, benchmark, root, split, options).metrics
