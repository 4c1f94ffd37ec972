"""Forward+backward (+AdamW) time of one FLAIR training step at a model preset.

    .venv/bin/python benchmarks/train_step.py --model tiny-64 --batch 64 --k 4
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from flair_core import create_model
from flair_core.methods.flair import FlairLoss, FlairSettings


def measure(model_name: str, batch: int, k: int, steps: int = 8, warmup: int = 2,
            caption_tokens: int = 20) -> dict:
    """Median step times on random inputs; texts have `caption_tokens` tokens before EOT."""
    torch.manual_seed(0)
    model = create_model(model_name).train()
    cfg = model.config
    loss_fn = FlairLoss(FlairSettings())
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    images = torch.randn(batch, 3, cfg.vision_cfg.image_size, cfg.vision_cfg.image_size)
    texts = torch.randint(1, 49000, (batch, k, cfg.text_cfg.context_length))
    texts[..., 0], texts[..., caption_tokens], texts[..., caption_tokens + 1 :] = 49406, 49407, 0

    def step(with_optimizer: bool) -> float:
        start = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        loss = sum(loss_fn(model(images, texts), model).values())
        loss.backward()
        if with_optimizer:
            optimizer.step()
        return time.perf_counter() - start

    for _ in range(warmup):
        step(True)
    fwd_bwd = [step(False) for _ in range(steps)]
    full = [step(True) for _ in range(steps)]
    return {"params": sum(p.numel() for p in model.parameters()), "fwd_bwd": statistics.median(fwd_bwd),
            "step": statistics.median(full), "fwd_bwd_min": min(fwd_bwd), "step_min": min(full)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="tiny-64")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--k", type=int, default=4, help="sub-captions per image")
    parser.add_argument("--steps", type=int, default=8)
    args = parser.parse_args()
    r = measure(args.model, args.batch, args.k, args.steps)
    print(f"model={args.model} params={r['params']:,} ({r['params'] / 1e6:.2f} M) batch={args.batch} "
          f"K={args.k} texts/step={args.batch * args.k} threads={torch.get_num_threads()}")
    print(f"forward+backward   median {r['fwd_bwd']:.3f} s  min {r['fwd_bwd_min']:.3f} s")
    print(f"+ AdamW step       median {r['step']:.3f} s  min {r['step_min']:.3f} s  "
          f"-> {args.batch / r['step']:.1f} images/s")


if __name__ == "__main__":
    main()
