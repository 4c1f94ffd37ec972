"""The main job's closing table: per method, the newest registered version's key metrics and its alias.

    python -m flair_lab.main_job_table [--methods flair clip ...]    # default: every registered method
"""

from __future__ import annotations

import argparse
import os

from mlflow import MlflowClient

from flair_core.evaluation.comparison import main_table
from flair_core.evaluation.headline import MAIN_TABLE
from flair_core.methods import METHODS, get_method, own_modes_text
from flair_lab.tracking import registered_name


def rows(methods: list[str]) -> list[list[str]]:
    client = MlflowClient()
    table = []
    for method in methods:
        versions = client.search_model_versions(f"name = '{registered_name(method)}'")
        if not versions:
            table.append([method, "-", "not registered", "-"] + ["-"] * len(MAIN_TABLE))
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
    """The main table's row of a run (`main_table`: each column in the method's own mode): value, [95 %
    interval] and (chance) where recorded, else '-'."""
    table = main_table({method: metrics}, {method: get_method(method).primary_mode})
    return [table.cell(method, c.key) if table.value(method, c.key) is not None else "-"
            for c in table.columns]


def urls() -> dict[str, str]:
    prefect = os.environ.get("PREFECT_API_URL", "").removesuffix("/api")
    return {"Prefect UI": prefect, "MLflow UI": os.environ.get("MLFLOW_TRACKING_URI", ""),
            "Dashboard": os.environ.get("FLAIR_DASHBOARD_URL", "http://127.0.0.1:8501")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    args = parser.parse_args()
    header = ["method", "version", "alias", "training"] + [column.label for column in MAIN_TABLE]
    table = rows(args.methods)
    widths = [max(len(str(r[i])) for r in [header, *table]) for i in range(len(header))]
    for row in [header, ["-" * w for w in widths], *table]:
        print("  ".join(str(c).rjust(w) for c, w in zip(row, widths, strict=True)))
    own = own_modes_text()
    print(f"(percent, each method in its own scoring mode: {own}; [95 % bootstrap interval over twin-pair "
          "clusters of queries, or images], (reference levels: chance, majority class); one seed)")
    for name, url in urls().items():
        print(f"{name:11s} {url}")


if __name__ == "__main__":
    main()
