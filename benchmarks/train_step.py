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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="tiny-64")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--k", type=int, default=4, help="sub-captions per image")
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--warmup", type=int, default=2)
    args = parser.parse_args()

    torch.manual_seed(0)
    model = create_model(args.model).train()
    cfg = model.config
    loss_fn = FlairLoss(FlairSettings())
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    images = torch.randn(args.batch, 3, cfg.vision_cfg.image_size, cfg.vision_cfg.image_size)
    texts = torch.randint(1, 49000, (args.batch, args.k, cfg.text_cfg.context_length))
    texts[..., 0], texts[..., 20], texts[..., 21:] = 49406, 49407, 0

    def step(with_optimizer: bool) -> float:
        start = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        loss = sum(loss_fn(model(images, texts), model.visual_proj, args.k).values())
        loss.backward()
        if with_optimizer:
            optimizer.step()
        return time.perf_counter() - start

    for _ in range(args.warmup):
        step(True)
    fwd_bwd = [step(False) for _ in range(args.steps)]
    full = [step(True) for _ in range(args.steps)]
    params = sum(p.numel() for p in model.parameters())
    print(f"model={args.model} params={params:,} ({params / 1e6:.2f} M) batch={args.batch} K={args.k} "
          f"texts/step={args.batch * args.k} threads={torch.get_num_threads()}")
    print(f"forward+backward   median {statistics.median(fwd_bwd):.3f} s  min {min(fwd_bwd):.3f} s")
    print(f"+ AdamW step       median {statistics.median(full):.3f} s  min {min(full):.3f} s  "
          f"-> {args.batch / statistics.median(full):.1f} images/s")


if __name__ == "__main__":
    main()
