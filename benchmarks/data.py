"""Data throughput: generator images/s, loader samples/s (decode + sampling + tokenising), and the training
step they must keep up with.

    .venv/bin/python benchmarks/data.py --images 2048 --k 8 --batch 64
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch
from train_step import measure

from flair_core import get_tokenizer, get_transform, load_model_config
from flair_core.data.builtin import BuiltinDataConfig, generate
from flair_core.data.captions import SamplingConfig
from flair_core.data.loader import LoaderConfig, TextViews, train_loader


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="tiny-64")
    parser.add_argument("--images", type=int, default=2048, help="training images to generate")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--k", type=int, default=8)
    parser.add_argument("--steps", type=int, default=24, help="loader batches to time")
    args = parser.parse_args()
    workers = LoaderConfig().workers
    cfg = load_model_config(args.model)

    with tempfile.TemporaryDirectory() as tmp:
        data = BuiltinDataConfig(image_size=cfg.vision_cfg.image_size, train_images=args.images, val_images=0,
                                 test_images=0, classification_images=0, shard_size=256)
        start = time.perf_counter()
        generate(data, Path(tmp) / "d", splits=("train",))
        gen_rate = args.images / (time.perf_counter() - start)

        loader = train_loader(f"{tmp}/d/train/shard-{{000000..{args.images // 256 - 1:06d}}}.tar",
                              TextViews(SamplingConfig(k=args.k)), get_tokenizer(cfg),
                              get_transform(cfg, True), args.batch, args.steps, LoaderConfig())
        batches = iter(loader)
        next(batches)  # worker start-up is not throughput
        start = time.perf_counter()
        n = sum(1 for _ in batches)
        load_rate = n * args.batch / (time.perf_counter() - start)

    step = measure(args.model, args.batch, args.k, steps=4)
    train_rate = args.batch / step["step"]
    print(f"threads={torch.get_num_threads()} loader workers={workers} model={args.model} K={args.k} "
          f"batch={args.batch} image={cfg.vision_cfg.image_size}px")
    print(f"generator          {gen_rate:8.0f} images/s  (render + PNG + captions + shard writing)")
    print(f"loader             {load_rate:8.0f} samples/s (tar + decode + augment + {args.k} sub-captions + "
          "tokenise)")
    print(f"training step      {train_rate:8.0f} samples/s ({step['step']:.3f} s per step of {args.batch})")
    print(f"loader / step      {load_rate / train_rate:8.2f}x  "
          f"({'faster' if load_rate > train_rate else 'SLOWER'})")


if __name__ == "__main__":
    main()
