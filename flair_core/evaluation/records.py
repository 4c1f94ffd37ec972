"""Per-query records: what every evaluation keeps beside its metrics so that intervals and paired comparisons
can be computed after the fact, for any two runs on the same benchmark.

`flair evaluate` writes `<benchmark>.queries.npz` beside `<benchmark>.json`: flat arrays, small (the built-in
fine-grained test set, three FLAIR modes: ~80 kB) and readable with numpy alone:

* retrieval, per direction `d` (`t2i`, `i2t`, and `strict_t2i` etc. where the strict variant exists):
  `d/query` (the text or image index), `d/cluster` (its resampling cluster) and per scoring mode
  `<mode>/d/rank` (0-based rank of the query's best positive); on built-in sets also the diagnostics'
  (`diagnostics.py`) `text/fact_type` (per text), and per minimal pair `pair/query` (the text),
  `pair/cluster` (its twin pair), `pair/change` (what the twin changed) and per mode `<mode>/pair/margin`
  (the text's score for its image minus its score for the twin);
* segmentation: `image`, `cluster`, and per mode `<mode>/intersection`, `<mode>/union` (I, C) pixel counts;
* classification: `image`, `cluster`, `label`, `zeroshot/correct` (top-1 hit).

`outcomes(records, metric)` turns them into a metric's resampling units (`stats.Outcomes`).
"""

from __future__ import annotations

import re
import zipfile
from pathlib import Path

import numpy as np

from flair_core.evaluation import stats
from flair_core.fileio import write_atomic

SUFFIX = ".queries.npz"


class RecordsError(ValueError):
    """A records file that is missing, unreadable, or lacks the metric asked for: one line naming it."""


def records_path(eval_dir: str | Path, benchmark: str) -> Path:
    return Path(eval_dir) / f"{benchmark}{SUFFIX}"


def save_records(path: str | Path, records: dict[str, np.ndarray]) -> None:
    write_atomic(path, lambda f: np.savez_compressed(f, **records))


def load_records(path: str | Path) -> dict[str, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as data:
            return {name: data[name] for name in data.files}
    except FileNotFoundError:
        raise RecordsError(f"{path}: no per-query records (evaluated before they were kept? re-run "
                           "`flair evaluate`)") from None
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as err:
        raise RecordsError(f"{path}: unreadable per-query records ({str(err).splitlines()[0]})") from None


def outcomes(records: dict[str, np.ndarray], metric: str, source: str = "records") -> stats.Outcomes:
    """`<mode>/<metric>` (e.g. `flair/t2i_r1`, `flair/strict_i2t_r5`, `flair/t2i_r1/by_fact/relation`,
    `flair/minimal_pair/colour`, `patch/miou`, `zeroshot/top1`) -> its resampling units. Raises RecordsError
    naming what is missing."""
    mode, _, name = metric.partition("/")

    def need(key: str) -> np.ndarray:
        if key not in records:
            raise RecordsError(f"{source}: no {key!r} for {metric} (have: {', '.join(sorted(records))})")
        return records[key]

    if recall := re.fullmatch(r"((?:strict_)?(?:t2i|i2t))_r(\d+)", name):
        direction, k = recall.group(1), int(recall.group(2))
        return stats.recall_outcomes(need(f"{mode}/{direction}/rank"), need(f"{direction}/cluster"), k,
                                     need(f"{direction}/query"))
    if by_fact := re.fullmatch(r"((?:strict_)?t2i)_r(\d+)/by_fact/(\w+)", name):
        direction, k, kind = by_fact.group(1), int(by_fact.group(2)), by_fact.group(3)
        query = need(f"{direction}/query")
        chosen = need("text/fact_type")[query] == kind
        if not chosen.any():
            raise RecordsError(f"{source}: no {kind!r} queries for {metric}")
        return stats.recall_outcomes(need(f"{mode}/{direction}/rank")[chosen],
                                     need(f"{direction}/cluster")[chosen], k, query[chosen])
    if pair := re.fullmatch(r"minimal_pair(?:/(\w+))?", name):
        chosen = np.ones(len(need("pair/query")), dtype=bool)
        if pair.group(1):
            chosen = need("pair/change") == pair.group(1)
        if not chosen.any():
            raise RecordsError(f"{source}: no minimal pairs for {metric}")
        return stats.minimal_pair_outcomes(need(f"{mode}/pair/margin")[chosen], need("pair/cluster")[chosen],
                                           need("pair/query")[chosen])
    if name == "miou":
        return stats.miou_outcomes(need(f"{mode}/intersection"), need(f"{mode}/union"), need("cluster"),
                                   need("image"))
    if name == "top1":
        return stats.accuracy_outcomes(need(f"{mode}/correct"), need("cluster"), need("image"))
    raise RecordsError(f"{source}: no per-query outcomes for metric {metric!r} (R@k, R@k by fact type, "
                       "minimal pairs, mIoU and top-1 have them)")
