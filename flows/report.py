"""The main job's closing table: per method, the newest registered version's key metrics and its alias.

    python -m flows.report --methods flair clip filip dreamlip
"""

from __future__ import annotations

import argparse
import os

from mlflow import MlflowClient

from flair_core.compare import format_cell, noise_of
from flair_core.evaluation.retrieval import PRIMARY_MODE
from flows.tracking import registered_name

COLUMNS = [
    ("fine-grained t2i R@1", "retrieval/builtin_fine_grained/{mode}/t2i_r1"),
    ("fine-grained i2t R@1", "retrieval/builtin_fine_grained/{mode}/i2t_r1"),
    ("long t2i R@1", "retrieval/builtin_long/{mode}/t2i_r1"),
    ("standard t2i R@1", "retrieval/builtin_standard/{mode}/t2i_r1"),
    ("seg mIoU", "segmentation/builtin_segmentation/patch/miou"),
    ("cls top-1", "classification/builtin_classification/zeroshot/top1"),
]


def rows(methods: list[str]) -> list[list[str]]:
    client = MlflowClient()
    table = []
    for method in methods:
        versions = client.search_model_versions(f"name = '{registered_name(method)}'")
        if not versions:
            table.append([method, "-", "not registered", "-"] + ["-"] * len(COLUMNS))
            continue
        newest = max(versions, key=lambda v: int(v.version))
        metrics = client.get_run(newest.run_id).data.metrics
        aliases = ",".join(client.get_model_version(newest.name, newest.version).aliases) or "-"
        table.append([method, newest.version, aliases, budget(metrics)] + cells(metrics, method))
    return table


def budget(metrics: dict[str, float]) -> str:
    """What the run spent: optimizer steps, and the wall minutes of those steps where logged."""
    if "train/steps" not in metrics:
        return "-"
    minutes = f", {metrics['train/seconds'] / 60:.1f} min" if "train/seconds" in metrics else ""
    return f"{int(metrics['train/steps'])} steps{minutes}"


def cells(metrics: dict[str, float], method: str) -> list[str]:
    """Each column in the method's own mode: value, [95 % interval] and (chance) where recorded, else '-'."""
    keys = [key.format(mode=PRIMARY_MODE[method]) for _, key in COLUMNS]
    return [format_cell(metrics[k], *noise_of(metrics, k)) if k in metrics else "-" for k in keys]


def urls() -> dict[str, str]:
    prefect = os.environ.get("PREFECT_API_URL", "").removesuffix("/api")
    return {"Prefect UI": prefect, "MLflow UI": os.environ.get("MLFLOW_TRACKING_URI", ""),
            "Dashboard": os.environ.get("FLAIR_DASHBOARD_URL", "http://127.0.0.1:8501")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--methods", nargs="+", default=list(PRIMARY_MODE))
    args = parser.parse_args()
    header = ["method", "version", "alias", "training"] + [name for name, _ in COLUMNS]
    table = rows(args.methods)
    widths = [max(len(str(r[i])) for r in [header, *table]) for i in range(len(header))]
    for row in [header, ["-" * w for w in widths], *table]:
        print("  ".join(str(c).rjust(w) for c, w in zip(row, widths, strict=True)))
    print("(R@1 in percent, each method in its own scoring mode: FLAIR text-conditioned, FILIP token-wise, "
          "CLIP and DreamLIP global; [95 % bootstrap interval over queries], (chance level))")
    for name, url in urls().items():
        print(f"{name:11s} {url}")


if __name__ == "__main__":
    main()
