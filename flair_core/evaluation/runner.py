"""The one call that evaluates a model on a benchmark (`flair evaluate`, validation during training and the
orchestrators all use `run_benchmark`).

A benchmark is an entry of the registry (`flair_core/data/registry.py`): its family, loader, splits and
default split. One evaluator per family turns the loaded source into flat metrics named
`<family>/<benchmark>/<mode>/<metric>`; scoring modes default to what the model's method offers.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from flair_core.data.errors import DataError
from flair_core.data.registry import get_benchmark
from flair_core.evaluation.classification import evaluate_classification
from flair_core.evaluation.headline import metric_key
from flair_core.evaluation.metrics import EvaluationError, non_finite_metrics
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


def _retrieval(model, name, source, tokenizer, transform, options: EvalOptions) -> dict[str, float]:
    return evaluate_retrieval(model, tokenizer, transform, source, options.modes or None, options.topk,
                              options.dtype, options.budget_mb)


def _segmentation(model, name, source, tokenizer, transform, options: EvalOptions) -> dict[str, float]:
    metrics = {}
    for mode in options.modes or method_of(model).segmentation_modes:
        result = evaluate_segmentation(model, tokenizer, transform, source, mode=mode,
                                       background_threshold=options.background_threshold, device=options.device)
        metrics.update({metric_key("segmentation", name, mode, m): 100 * result[m]
                        for m in ("miou", "pixel_accuracy")})
        metrics.update({metric_key("segmentation", name, mode, f"iou/{cls}"): 100 * value
                        for cls, value in result["iou"].items()})
    metrics[metric_key("segmentation", name, None, "num_images")] = source.num_images
    return metrics


def _classification(model, name, source, tokenizer, transform, options: EvalOptions) -> dict[str, float]:
    result = evaluate_classification(model, tokenizer, transform, source, device=options.device)
    return {**{metric_key("classification", name, "zeroshot", m): 100 * result[m] for m in ("top1", "top5")},
            metric_key("classification", name, None, "num_images"): result["num_images"]}


EVALUATORS = {"retrieval": _retrieval, "segmentation": _segmentation, "classification": _classification}


def run_benchmark(model, benchmark: str, root: str | Path, split: str | None = None,
                  options: EvalOptions = EvalOptions()) -> dict[str, float]:
    spec = get_benchmark(benchmark)
    if not Path(root).is_dir():
        raise DataError(f"benchmark root {root} does not exist")
    source = spec.load(Path(root), spec.split(split), options)  # missing files fail here, before compute
    model.to(options.device)
    tokenizer, transform = get_tokenizer(model.config), get_transform(model.config, train=False)
    metrics = EVALUATORS[spec.family](model, benchmark, source, tokenizer, transform, options)
    bad = non_finite_metrics(metrics)
    if bad:  # the last line of defence: a metric that is not a number is never reported
        raise EvaluationError(f"{benchmark}: {len(bad)} metrics are not finite, first: {bad[0]} = {metrics[bad[0]]}")
    return metrics
