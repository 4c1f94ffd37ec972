"""docs/architecture.md's "Adding a benchmark" recipe, followed as written: if the recipe stops being enough
(another list to update, a KeyError), this fails."""

import pytest
from PIL import Image

from flair_cli import main
from flair_core import create_model
from flair_core.data.benchmarks import RetrievalSet
from flair_core.data.errors import DataError
from flair_core.data.registry import BENCHMARKS, Benchmark, register
from flair_core.evaluation.headline import metric_key
from flair_core.evaluation.runner import run_benchmark

COLOURS = {"red": (220, 30, 30), "green": (30, 200, 30), "blue": (30, 30, 220), "yellow": (230, 220, 40)}


def read_colours(root, split) -> RetrievalSet:
    """The recipe's step 1, a reader: `<root>/<split>/<colour>.png`, one caption per image."""
    paths = tuple(root / split / f"{colour}.png" for colour in COLOURS)
    return RetrievalSet("colours", paths, tuple(COLOURS), tuple(f"a {colour} square" for colour in COLOURS),
                        tuple(range(len(COLOURS))))


@pytest.fixture
def colours(tmp_path):
    """The recipe's step 2, one registry entry (from outside the package, as a plug-in would); removed
    after."""
    (tmp_path / "test").mkdir()
    for colour, rgb in COLOURS.items():
        Image.new("RGB", (32, 32), rgb).save(tmp_path / "test" / f"{colour}.png")
    register(Benchmark("colours", "retrieval", read=read_colours, splits=("test", "val")))
    yield tmp_path
    del BENCHMARKS["colours"]


def test_a_retrieval_benchmark_is_one_entry_plus_its_reader(colours, capsys):
    main(["benchmarks"])
    assert any(line.split() == ["colours", "retrieval", "default", "split:", "test"]
               for line in capsys.readouterr().out.splitlines())
    # flair evaluate's own call, on the entry's default split
    metrics = run_benchmark(create_model("micro-32", "clip").eval(), "colours", colours)
    assert 0 <= metrics[metric_key("retrieval", "colours", "global", "t2i_r1")] <= 100
    assert metrics[metric_key("retrieval", "colours", None, "num_images")] == len(COLOURS)
    with pytest.raises(DataError, match="colours: unknown split 'train'; known: test, val"):
        run_benchmark(create_model("micro-32", "clip").eval(), "colours", colours, "train")
