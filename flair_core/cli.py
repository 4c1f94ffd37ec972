"""`flair`: the one command-line front door that DVC stages, Prefect tasks and cluster jobs all call."""

from __future__ import annotations

import argparse
import sys

from flair_core.checkpoint import CheckpointError
from flair_core.config import ConfigError


def cmd_models(args: argparse.Namespace) -> None:
    import torch

    from flair_core import builtin_model_names, create_model

    for name in builtin_model_names():
        with torch.device("meta"):
            model = create_model(name, method=args.method)
        cfg = model.config
        params = sum(p.numel() for p in model.parameters())
        print(
            f"{name:16s} {params / 1e6:8.2f} M params  image {cfg.vision_cfg.image_size}px/"
            f"patch {cfg.vision_cfg.patch_size}  L={cfg.vision_cfg.num_patches}  D={cfg.embed_dim}"
        )


def cmd_check_weights(args: argparse.Namespace) -> None:
    from flair_core import create_model

    model = create_model(args.model, method=args.method, pretrained=args.checkpoint)
    tensors = len(model.state_dict())
    print(
        f"{args.checkpoint}: loaded {tensors} tensors into {args.model} ({args.method}); "
        f"logit_scale exp={model.logit_scale.exp().item():.4f}, logit_bias={model.logit_bias.item():.4f}"
    )


def cmd_prepare(args: argparse.Namespace) -> None:
    import time

    from flair_core.data.builtin import BuiltinDataConfig, generate
    from flair_core.params import load_section

    config = load_section(BuiltinDataConfig, "data", args.params, args.set)
    start = time.perf_counter()
    meta = generate(config, args.out)
    seconds = time.perf_counter() - start
    total = sum(meta["counts"].values())
    counts = ", ".join(f"{k} {v}" for k, v in meta["counts"].items())
    print(f"wrote {args.out}: {counts} images in {seconds:.1f} s ({total / seconds:.0f} images/s)")


def cmd_train(args: argparse.Namespace) -> None:
    import logging

    from flair_core.training.config import load_run_config
    from flair_core.training.loop import train

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    config = load_run_config(args.params, args.set)
    last = train(config, args.out, resume=args.resume)
    if last is not None:
        print(f"trained {config.method.name}: {last}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="flair", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("models", help="list the built-in model configs with their sizes")
    p.add_argument("--method", default="flair", help="method whose head is counted (default: flair)")
    p.set_defaults(func=cmd_models)

    p = sub.add_parser("prepare", help="generate the built-in scene data set into webdataset shards")
    p.add_argument("--out", required=True, help="output folder (replaced atomically when complete)")
    p.add_argument("--params", help="YAML params file; its `data:` section is used")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a data setting, e.g. --set train_images=1024 (repeatable)")
    p.set_defaults(func=cmd_prepare)

    p = sub.add_parser("train", help="train a method (run it under torchrun for several processes or nodes)")
    p.add_argument("--params", action="append", default=[], metavar="FILE",
                   help="params YAML (repeatable; later files override earlier ones section by section)")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override one setting, e.g. --set train.lr=1e-3 --set method.name=clip")
    p.add_argument("--out", required=True, help="run folder: config.yaml, metrics.jsonl, checkpoints/")
    p.add_argument("--resume", metavar="auto|PATH",
                   help="'auto': continue from the newest checkpoint in --out if any; or a checkpoint/run folder")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("check-weights", help="load a checkpoint (e.g. flair-cc3m-recap.pt) and report")
    p.add_argument("checkpoint", help="a .pt/.pth/.bin or .safetensors file")
    p.add_argument("--model", default="ViT-B-16-FLAIR", help="built-in config name or JSON path")
    p.add_argument("--method", default="flair")
    p.set_defaults(func=cmd_check_weights)
    return parser


def one_line(err: BaseException) -> str:
    """The error's own message; errors re-raised from DataLoader workers carry it on their last line."""
    lines = [line for line in str(err).splitlines() if line.strip()]
    if lines and lines[0].startswith("Caught ") and len(lines) > 1:
        return lines[-1].split(": ", 1)[-1]
    return lines[0] if lines else type(err).__name__


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except (ConfigError, CheckpointError, ValueError, FloatingPointError) as err:
        print(f"flair {args.command}: error: {one_line(err)}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
