"""Diagnostics of the built-in retrieval sets: which kinds of facts a model gets right, not only how many.

* **Recall by fact type**: text→image R@1 over the queries of one type (`data/builtin.py`: `object`,
  `relation`, `merged`, …), with the headline's cluster-bootstrap interval (over the twin pairs holding a
  query of that type) and its chance level (a random ranking, exact from each query's positives).
* **Minimal-pair accuracy**: every evaluation image has a twin that differs in one thing: an attribute of one
  object (`shape`, `colour`, `size`, `pattern`) or two objects swapping colours or positions. For each query
  true of its image and false of the twin (the twin is not among its positives), does the model score its
  image above the twin? Per change, with an interval over twin pairs; chance 50 %. A tie counts half: a model
  that cannot tell the two apart is at chance, not below it.

Both are computed from the per-query records (`records.py`): `text/fact_type` and, per minimal pair,
`pair/query`, `pair/cluster`, `pair/change` and `<mode>/pair/margin` (the text's score for its image minus
its score for the twin, in the mode's t2i scores), so they can be recomputed after the fact.
"""

from __future__ import annotations

import numpy as np
import torch

from flair_core.data.retrieval_sets import RetrievalTask
from flair_core.evaluation import CHANCE, CI_HIGH, CI_LOW, stats
from flair_core.evaluation.headline import metric_key
from flair_core.evaluation.metrics import chance_recall
from flair_core.evaluation.records import outcomes

BY_FACT = "t2i_r1/by_fact"
MINIMAL_PAIR = "minimal_pair"
MINIMAL_PAIR_CHANCE = 50.0


def minimal_pairs(task: RetrievalTask) -> dict[str, np.ndarray]:
    """The task's minimal pairs as records: each text true of its image and false of the twin (`pair/query`),
    its twin pair (`pair/cluster`) and what the twin changed (`pair/change`); none where the task has no
    twins."""
    if task.twin is None or task.twin_change is None:
        return {}
    texts = torch.arange(len(task.texts))
    twin = task.twin[task.text_source]  # (T,)
    query = texts[~task.relevant[twin, texts]].numpy()
    source = task.text_source.numpy()[query]
    return {"pair/query": query, "pair/cluster": task.image_cluster.numpy()[source],
            "pair/change": np.array(task.twin_change)[source]}


def pair_margins(t2i: torch.Tensor, task: RetrievalTask, query: np.ndarray) -> np.ndarray:
    """t2i (I, T) scores -> per minimal-pair query, its score for its image minus its score for the twin."""
    query = torch.as_tensor(query, dtype=torch.long)
    source = task.text_source[query]
    return (t2i[source, query] - t2i[task.twin[source], query]).numpy()


def _with_interval(key: str, found: stats.Outcomes, chance: float) -> dict[str, float]:
    estimate = stats.estimate([found])
    return {key: estimate.value, key + CI_LOW: estimate.low, key + CI_HIGH: estimate.high,
            key + CHANCE: chance}


def diagnostic_metrics(records: dict[str, np.ndarray], task: RetrievalTask, modes: tuple[str, ...]
                       ) -> dict[str, float]:
    """R@1 by fact type (where a set has more than one type) and minimal-pair accuracy per change and over
    all, per mode, each with interval and chance; the query counts under `num_texts/`."""
    metrics = {}
    if "text/fact_type" in records:
        query = records["t2i/query"]
        fact_type = records["text/fact_type"][query]
        positives = task.relevant.sum(dim=0)[torch.as_tensor(query)]  # (Q,)
        types = sorted(set(fact_type.tolist()))
        for kind in types if len(types) > 1 else ():  # one type is the headline itself
            chosen = torch.as_tensor(fact_type == kind)
            chance = chance_recall(positives[chosen], task.num_images, 1)
            metrics[metric_key("retrieval", task.name, None, f"num_texts/by_fact/{kind}")] = int(chosen.sum())
            for mode in modes:
                metrics |= _with_interval(metric_key("retrieval", task.name, mode, f"{BY_FACT}/{kind}"),
                                          outcomes(records, f"{mode}/{BY_FACT}/{kind}"), chance)
    if len(records.get("pair/query", ())):
        change = records["pair/change"]
        for kind in (None, *sorted(set(change.tolist()))):  # None: every minimal pair
            name = MINIMAL_PAIR if kind is None else f"{MINIMAL_PAIR}/{kind}"
            count = len(change) if kind is None else int((change == kind).sum())
            metrics[metric_key("retrieval", task.name, None, f"num_texts/{name}")] = count
            for mode in modes:
                metrics |= _with_interval(metric_key("retrieval", task.name, mode, name),
                                          outcomes(records, f"{mode}/{name}"), MINIMAL_PAIR_CHANCE)
    return metrics
