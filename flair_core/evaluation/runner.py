"""One benchmark per call: the front door `flair evaluate` and the orchestrators use.

Benchmark names pick the task family; results are flat metric dicts named `<family>/<benchmark>/<mode>/<metric>`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from flair_core import get_tokenizer, get_transform
from flair_core.data.benchmarks import BENCHMARKS
from flair_core.data.errors import DataError
from flair_core.evaluation.classification import (
    builtin_classification,
    evaluate_classification,
    imagefolder_classification,
)
from flair_core.evaluation.retrieval import BUILTIN_FAMILIES, evaluate_retrieval, load_task
from flair_core.evaluation.segmentation import (
    ade20k_segmentation,
    builtin_segmentation,
    cityscapes_segmentation,
    evaluate_segmentation,
    voc_segmentation,
)

SEGMENTATION = {
    "builtin_segmentation": lambda root, split: builtin_segmentation(root, split or "test"),
    "voc": lambda root, split: voc_segmentation(root, split or "val", background=True),
    "voc20": lambda root, split: voc_segmentation(root, split or "val", background=False),
    "cityscapes": lambda root, split: cityscapes_segmentation(root, split or "val"),
}
CLASSIFICATION = {
    "builtin_classification": lambda root, split: builtin_classification(root),
    "imagefolder": lambda root, split: imagefolder_classification(Path(root) / split if split else root),
}
SEGMENTATION_MODES = {"flair": ("patch", "attention")}


@dataclass(frozen=True)
class EvalOptions:
    modes: tuple[str, ...] = ()
    topk: int = 128
    dtype: torch.dtype = torch.float32
    budget_mb: float = 512
    background_threshold: float | None = None
    class_names: tuple[str, ...] = ()  # ADE20K-style folders name their classes here
    device: str = "cpu"


def benchmark_names() -> list[str]:
    retrieval = [f"builtin_{f}" for f in BUILTIN_FAMILIES] + sorted(BENCHMARKS)
    return retrieval + sorted(SEGMENTATION) + ["ade20k"] + sorted(CLASSIFICATION)


def run_benchmark(model, method: str, benchmark: str, root: str | Path, split: str | None = None,
                  options: EvalOptions = EvalOptions()) -> dict[str, float]:
    if not Path(root).is_dir():
        raise DataError(f"benchmark root {root} does not exist")
    tokenizer, transform = get_tokenizer(model.config), get_transform(model.config, train=False)
    model.to(options.device)
    if benchmark in SEGMENTATION or benchmark == "ade20k":
        source = (ade20k_segmentation(root, options.class_names, split or "validation") if benchmark == "ade20k"
                  else SEGMENTATION[benchmark](root, split))
        modes = options.modes or SEGMENTATION_MODES.get(method, ("patch",))
        metrics = {}
        for mode in modes:
            result = evaluate_segmentation(model, tokenizer, transform, source, mode=mode,
                                           background_threshold=options.background_threshold,
                                           device=options.device)
            prefix = f"segmentation/{benchmark}/{mode}"
            metrics.update({f"{prefix}/miou": 100 * result["miou"],
                            f"{prefix}/pixel_accuracy": 100 * result["pixel_accuracy"]})
            metrics.update({f"{prefix}/iou/{name}": 100 * value for name, value in result["iou"].items()})
        metrics[f"segmentation/{benchmark}/num_images"] = source.num_images
        return metrics
    if benchmark in CLASSIFICATION:
        source = CLASSIFICATION[benchmark](root, split)
        result = evaluate_classification(model, tokenizer, transform, source, device=options.device)
        prefix = f"classification/{benchmark}/zeroshot"
        return {f"{prefix}/top1": 100 * result["top1"], f"{prefix}/top5": 100 * result["top5"],
                f"classification/{benchmark}/num_images": result["num_images"]}
    task = load_task(benchmark, root, split)
    return evaluate_retrieval(model, method, tokenizer, transform, task, options.modes or None, options.topk,
                              options.dtype, options.budget_mb, device=options.device)
