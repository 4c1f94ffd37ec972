"""The headline metrics, defined once: what each task family is judged by, and the main table's columns.

Metric keys are `<family>/<benchmark>/<mode>/<metric>`, spelled by `metric_key` only. The CLI summary,
`flair compare`, MLflow's compared metrics, the promotion gate, the main job's table and the dashboard all
read these.
"""

from __future__ import annotations

from dataclasses import dataclass

# Per family: (metric, label) pairs a family is judged by; all of them: higher is better.
FAMILY_METRICS: dict[str, tuple[tuple[str, str], ...]] = {
    "retrieval": (("t2i_r1", "t2i R@1"), ("i2t_r1", "i2t R@1")),
    "segmentation": (("miou", "mIoU"),),
    "classification": (("top1", "top-1"),),
}


def metric_key(family: str, benchmark: str, mode: str | None, metric: str) -> str:
    """A metric's flat name; `mode` None for what does not depend on the scoring mode (`num_images`)."""
    return "/".join(part for part in (family, benchmark, mode, metric) if part is not None)


@dataclass(frozen=True)
class Column:
    label: str
    key: str  # with `{mode}` where the method's own scoring mode goes

    def for_mode(self, mode: str) -> str:
        return self.key.format(mode=mode)


def own_mode_key(benchmark: str, metric: str) -> str:
    """A retrieval metric's key with `{mode}` where each method's own mode goes (`Column.for_mode`)."""
    return metric_key("retrieval", benchmark, "{mode}", metric)


# The main table (main job, dashboard Compare): the built-in benchmarks, retrieval in each method's own mode.
MAIN_TABLE = (
    Column("fine-grained t2i R@1", own_mode_key("builtin_fine_grained", "t2i_r1")),
    Column("fine-grained i2t R@1", own_mode_key("builtin_fine_grained", "i2t_r1")),
    Column("long t2i R@1", own_mode_key("builtin_long", "t2i_r1")),
    Column("standard t2i R@1", own_mode_key("builtin_standard", "t2i_r1")),
    Column("seg mIoU", metric_key("segmentation", "builtin_segmentation", "patch", "miou")),
    Column("cls top-1", metric_key("classification", "builtin_classification", "zeroshot", "top1")),
)


def promotion_metric(mode: str, benchmark: str = "builtin_fine_grained") -> str:
    """The metric a run is promoted on and a sweep optimises by default: fine-grained t2i R@1, own mode."""
    return metric_key("retrieval", benchmark, mode, "t2i_r1")


def is_headline(key: str) -> bool:
    """A family's judged metric in any benchmark and mode (not its strict variants, intervals, counts)."""
    parts = key.split("/")
    return len(parts) == 4 and parts[3] in dict(FAMILY_METRICS.get(parts[0], ()))


def headline(metrics: dict[str, float]) -> dict[str, float]:
    return {k: v for k, v in metrics.items() if is_headline(k)}
