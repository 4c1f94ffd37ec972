"""Run under torchrun (W ranks) or plainly (W = 1): one forward/backward of a method on a fixed global batch.

Writes the mean loss terms and the (DDP-averaged) gradients to OUT.pt from rank 0, so a test can compare
W = 2 with W = 1 on the same global batch.
"""

import sys

import torch
from torch.nn.parallel import DistributedDataParallel

from flair_core import create_model, distributed, get_method

method, out = sys.argv[1], sys.argv[2]
world = distributed.init("cpu")
spec = get_method(method)
settings = spec.settings()
torch.manual_seed(0)
model = create_model("micro-32", method, settings=settings)
loss_fn = spec.loss(settings, seed=0)
generator = torch.Generator().manual_seed(1)
B, K = 8, 3
batch = {
    "images": torch.randn(B, 3, 32, 32, generator=generator),
    "texts": torch.randint(1, 5000, (B, K, 77), generator=generator),
    "long_texts": torch.randint(1, 5000, (B, 77), generator=generator),
}
# Varied lengths: EOT at different columns, padding after.
for row, length in enumerate(torch.randint(5, 30, (B * K,), generator=generator).tolist()):
    flat = batch["texts"].view(B * K, 77)
    flat[row, length], flat[row, length + 1 :] = 49407, 0
batch["long_texts"][:, 60], batch["long_texts"][:, 61:] = 49407, 0
per_rank = B // world.size
mine = {k: v[world.rank * per_rank : (world.rank + 1) * per_rank] for k, v in batch.items()}
wrapped = DistributedDataParallel(model) if world.size > 1 else model
terms = loss_fn(wrapped(*loss_fn.inputs(mine)), model)
sum(terms.values()).backward()
mean_terms = {k: distributed.all_reduce_mean(v.detach()) for k, v in terms.items()}
if world.is_main:
    grads = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
    torch.save({"terms": mean_terms, "grads": grads}, out)
distributed.shutdown()
