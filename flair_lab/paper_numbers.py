"""The paper's published numbers: paper_numbers.yaml beside this module is their only copy, read by the
equal-budget study's report (its ablation table and claims) and the dashboard's Paper page."""

from __future__ import annotations

from functools import cache
from pathlib import Path

import yaml

PATH = Path(__file__).with_suffix(".yaml")


@cache
def _tables() -> dict[str, dict]:
    return {table["id"]: table for table in yaml.safe_load(PATH.read_text())["tables"]}


def value(table: str, column: str, **row) -> float:
    """One published cell; `row` picks the row by its fields: value("num_sub_captions", "coco_t2i_r1",
    K=8)."""
    for entry in _tables()[table]["rows"]:
        if all(entry.get(k) == v for k, v in row.items()):
            return entry["values"][column]
    raise KeyError(f"{PATH.name}: table {table} has no row {row}")
