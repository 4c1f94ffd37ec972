"""Loss primitives shared by the methods: sigmoid and softmax contrastive sums over gathered batches."""

from __future__ import annotations

import abc

import torch
import torch.nn.functional as F
from torch import nn


class MethodLoss(nn.Module, abc.ABC):
    """What every method's loss provides to the training loop.

    `views(sampling)` says which texts the loader must produce, `inputs(batch)` which batch entries the
    model's forward takes, `forward(out, head)` returns named terms (summed by the loop), and `advance()` is
    called once per optimizer step (not per micro-batch), so random choices stay fixed within a step.
    """

    def __init__(self, settings, seed: int = 0):
        super().__init__()
        self.settings = settings
        self.seed = seed

    @abc.abstractmethod
    def views(self, sampling):
        """The TextViews the loader must produce for this method."""

    @abc.abstractmethod
    def inputs(self, batch: dict) -> tuple[torch.Tensor, ...]:
        """The batch entries the model's forward takes, in order."""

    def advance(self) -> None:
        """Per-step state change; none by default."""

    def positive_rate(self, global_batch: int, k: int) -> float | None:
        """Share of positive pairs in the sigmoid loss at this batch and K (None: no sigmoid term).

        A logit bias of log(p / (1 − p)) makes the constant prediction optimal at step 0, instead of the
        billion-pair −10 that a short run cannot move away from.
        """
        return None

    def own_parameters(self, head: nn.Module) -> list[nn.Parameter]:
        """Model parameters the loss itself uses (outside the model's forward); none by default."""
        return []


def sigmoid_loss_sum(logits: torch.Tensor, positive: torch.Tensor) -> torch.Tensor:
    """−Σ log σ(y·z) with y = +1 where `positive` else −1."""
    signs = positive.to(logits.dtype) * 2 - 1
    return -F.logsigmoid(signs * logits).sum()


def positive_mask(rows: int, cols: int, width: int, device: torch.device, step: int,
                  first_row: int = 0) -> torch.Tensor:
    """Each row's positives as a boolean (rows, cols) mask: the `width` columns from step·r, r = first_row +
    row."""
    start = (torch.arange(rows, device=device)[:, None] + first_row) * step
    col = torch.arange(cols, device=device)[None, :]
    return (col >= start) & (col < start + width)


def softmax_contrastive(logits: torch.Tensor, positive: torch.Tensor) -> torch.Tensor:
    """Mean over rows of −log(Σ_pos p), p = softmax over the row: InfoNCE, multi-positive when a row has
    several.

    (Summing probabilities over positives is the multi-positive form used for DreamLIP's sub-captions; with
    one positive per row it is the usual cross-entropy.)
    """
    log_p = logits.float().log_softmax(dim=-1)
    return -(log_p.masked_fill(~positive, float("-inf")).logsumexp(dim=-1)).mean()
