"""Training speed of every method at a preset, and FLAIR's batched pooling against a per-pair loop.

    .venv/bin/python benchmarks/methods.py --model tiny-64 --batch 64 --k 4
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from flair_core import METHODS, create_model
from flair_core.losses import sigmoid_loss_sum
from flair_core.methods.flair import text_set_indices


def synthetic_batch(batch: int, k: int, image_size: int, generator: torch.Generator) -> dict:
    texts = torch.randint(1, 49000, (batch, k, 77), generator=generator)
    texts[..., 0], texts[..., 20], texts[..., 21:] = 49406, 49407, 0  # sub-captions ≈ 20 tokens
    long_texts = torch.randint(1, 49000, (batch, 77), generator=generator)
    long_texts[:, 0], long_texts[:, 76] = 49406, 49407  # long captions fill the context
    return {"images": torch.randn(batch, 3, image_size, image_size, generator=generator), "texts": texts,
            "long_texts": long_texts}


def naive_flair_loss(out: dict, head, k: int, offsets: torch.Tensor) -> torch.Tensor:
    """The FLAIR loss with the text-conditioned term computed one (image, text) pair at a time."""
    texts, tokens = out["text_features"], out["image_tokens"]
    b = tokens.shape[0]
    indices = text_set_indices(offsets, k)
    logits, positive = [], []
    for i in range(b):
        for m, n in enumerate(indices[i].tolist()):
            pooled = head.visual_proj(texts[n][None, None], tokens[i][None])[0][0, 0]
            logits.append(F.cosine_similarity(pooled, texts[n], dim=0))
            positive.append(i <= m < i + k)
    tcs_logits = out["logit_scale"] * torch.stack(logits) + out["logit_bias"]
    tcs = sigmoid_loss_sum(tcs_logits, torch.tensor(positive)) / indices.shape[1]
    g = F.normalize(out["image_features"], dim=-1)
    mps_logits = out["logit_scale"] * g @ F.normalize(texts, dim=-1).T + out["logit_bias"]
    own = torch.arange(b * k)[None, :] // k == torch.arange(b)[:, None]
    return 0.5 * tcs + 0.5 * sigmoid_loss_sum(mps_logits, own) / (b * k)


def time_steps(step, steps: int, warmup: int = 1) -> float:
    for _ in range(warmup):
        step()
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def measure(name: str, spec, args: argparse.Namespace) -> None:
    torch.manual_seed(0)
    settings = spec.settings()
    model = create_model(args.model, name, settings=settings).train()
    loss_fn = spec.loss(settings)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    batch = synthetic_batch(args.batch, args.k, model.config.vision_cfg.image_size, torch.Generator().manual_seed(0))
    terms = {}

    def step():
        optimizer.zero_grad(set_to_none=True)
        terms.update(loss_fn(model(*loss_fn.inputs(batch)), model))
        sum(terms.values()).backward()
        optimizer.step()
        loss_fn.advance()

    seconds = time_steps(step, args.steps)
    print(f"{name:11s} {seconds:8.3f} {1 / seconds:8.2f} {args.batch / seconds:10.1f}  {', '.join(terms)}")
    if name != "flair":
        return
    offsets = torch.randint(0, args.k, (args.batch, args.batch - 1))

    def naive_step():
        optimizer.zero_grad(set_to_none=True)
        naive_flair_loss(model(batch["images"], batch["texts"]), model, args.k, offsets).backward()
        optimizer.step()

    naive = time_steps(naive_step, max(1, args.steps // 2))
    print(f"{'flair-naive':11s} {naive:8.3f} {1 / naive:8.2f} {args.batch / naive:10.1f}  per-pair pooling loop "
          f"({args.batch * (args.batch + args.k - 1)} pool calls): {naive / seconds:.1f}x the batched step")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="tiny-64")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--k", type=int, default=4)
    parser.add_argument("--steps", type=int, default=5)
    args = parser.parse_args()
    print(f"model={args.model} batch={args.batch} K={args.k} threads={torch.get_num_threads()} fp32, AdamW")
    print(f"{'method':11s} {'step s':>8s} {'steps/s':>8s} {'samples/s':>10s}  loss terms")
    for name, spec in METHODS.items():
        measure(name, spec, args)


if __name__ == "__main__":
    main()
