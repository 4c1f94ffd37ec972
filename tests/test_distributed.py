"""Multi-process training: W=2 equals W=1, two torchrun nodes on loopback (private network namespace)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.helpers.processes import private_network

HELPERS = Path(__file__).parent / "helpers"
pytestmark = pytest.mark.integration


def torchrun(*args: str) -> list[str]:
    return [*private_network(), sys.executable, "-m", "torch.distributed.run", *args]


@pytest.mark.parametrize("method", ["flair", "clip", "filip", "dreamlip"])
def test_two_ranks_equal_one_rank_on_the_same_global_batch(method, tmp_path):
    script = str(HELPERS / "dist_equivalence.py")
    subprocess.run([sys.executable, script, method, str(tmp_path / "w1.pt")], check=True)
    subprocess.run(torchrun("--standalone", "--nproc_per_node=2", script, method, str(tmp_path / "w2.pt")),
                   check=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    one, two = torch.load(tmp_path / "w1.pt"), torch.load(tmp_path / "w2.pt")
    assert one["terms"].keys() == two["terms"].keys()
    for key in one["terms"]:
        torch.testing.assert_close(two["terms"][key], one["terms"][key], rtol=1e-5, atol=1e-5)
    assert one["grads"].keys() == two["grads"].keys()
    for name, grad in one["grads"].items():
        # relative to the tensor's largest entry: summation order differs between 1 and 2 ranks
        error = (two["grads"][name] - grad).abs().max().item()
        assert error <= 1e-5 * grad.abs().max().item() + 1e-8, (name, error)
