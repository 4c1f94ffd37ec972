"""torch.distributed plumbing: process-group set-up from torchrun's environment and gathering with grad.

Losses call `gather_with_grad`: with one process it returns its input unchanged, so the same loss code runs
on a laptop and on many GPU nodes.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

CPU = torch.device("cpu")


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1
    local_rank: int = 0
    device: torch.device = CPU

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init(device: str = "auto", timeout_s: int = 600) -> World:
    """Join the process group torchrun describes (gloo on CPU, nccl on GPU); a single process otherwise."""
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if "RANK" not in os.environ or int(os.environ.get("WORLD_SIZE", "1")) == 1:
        local = torch.device(device)
        return World(device=local)
    rank, size = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device == "cuda":
        torch.cuda.set_device(local_rank)
        local = torch.device("cuda", local_rank)
    else:
        local = torch.device(device)
    if not dist.is_initialized():
        backend = "nccl" if local.type == "cuda" else "gloo"
        dist.init_process_group(backend, timeout=timedelta(seconds=timeout_s))
    return World(rank=rank, size=size, local_rank=local_rank, device=local)


def current() -> tuple[int, int]:
    """(rank, world size) of the initialised group, (0, 1) without one."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


class _GatherWithGrad(torch.autograd.Function):
    """all_gather forward; backward sums every rank's gradient of the gathered tensor and keeps this rank's
    slice. (torch's own autograd all_gather is deprecated and, on gloo, mishandles non-contiguous grads.)"""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        rank, size = current()
        x = x.contiguous()
        out = torch.empty((size * x.shape[0], *x.shape[1:]), dtype=x.dtype, device=x.device)
        dist.all_gather(list(out.chunk(size)), x)
        ctx.rank, ctx.rows = rank, x.shape[0]
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.contiguous()
        dist.all_reduce(grad)
        return grad[ctx.rank * ctx.rows : (ctx.rank + 1) * ctx.rows]


def gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    """Concatenate every rank's `x` along dim 0; gradients flow back to the rank that produced each part."""
    _, size = current()
    if size == 1:
        return x
    return _GatherWithGrad.apply(x)


def all_reduce_mean(x: torch.Tensor) -> torch.Tensor:
    """Mean over ranks of a detached value (for logging)."""
    _, size = current()
    if size == 1:
        return x
    x = x.detach().clone()
    dist.all_reduce(x)
    return x / size


def shutdown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
