"""`flair`: the one command-line front door that DVC stages, Prefect tasks and cluster jobs all call."""

# Outside flair_core, so that parsing imports nothing of the library: `import flair_core` brings in torch and
# open_clip (seconds), which each verb imports when it runs. Help texts therefore name the listing verbs
# (`flair methods`, `flair benchmarks`) rather than reading the registries.

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path


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


def cmd_methods(args: argparse.Namespace) -> None:
    from flair_core import METHODS

    for method in METHODS.values():
        if args.names:
            print(method.name)
        else:
            print(f"{method.name:10s} retrieval modes {', '.join(method.retrieval_modes)} (own: "
                  f"{method.primary_mode}); segmentation {', '.join(method.segmentation_modes)}\n"
                  f"{'':10s} {method.summary}")


def cmd_benchmarks(args: argparse.Namespace) -> None:
    from flair_core.data.registry import BENCHMARKS

    for name, benchmark in BENCHMARKS.items():
        split = benchmark.default_split or "the loader's own"
        print(name if args.names else f"{name:22s} {benchmark.family:15s} default split: {split}")


def cmd_check_weights(args: argparse.Namespace) -> None:
    import torch

    from flair_core import create_model
    from flair_core.models import load_trained

    if args.model is None and is_training_checkpoint(args.checkpoint):
        model = load_trained(args.checkpoint)  # ours: it records its architecture and method
        params = sum(p.numel() for p in model.parameters()) / 1e6
        described = f"the architecture it records ({model.method_name}, {params:.2f} M params)"
    else:
        name = args.model or DEFAULT_WEIGHTS_MODEL
        model = create_model(name, method=args.method, pretrained=args.checkpoint)
        described = f"{name} ({args.method})"
    state = model.state_dict()
    broken = [key for key, tensor in state.items()
              if tensor.is_floating_point() and not torch.isfinite(tensor).all()]
    bias = getattr(model, "logit_bias", None)  # softmax losses have none
    print(f"{args.checkpoint}: loaded {len(state)} tensors into {described}; "
          f"logit_scale exp={model.logit_scale.exp().item():.4f}"
          + (f", logit_bias={bias.item():.4f}" if bias is not None else ""))
    if broken and not args.allow_nonfinite:
        raise ValueError(f"{args.checkpoint}: {len(broken)} of {len(state)} tensors hold NaN or inf values, "
                         f"first: {broken[0]} (--allow-nonfinite to accept)")


DEFAULT_WEIGHTS_MODEL = "ViT-B-16-FLAIR"


def is_training_checkpoint(path: str) -> bool:
    """Whether `path` is one of this project's training checkpoints (a torch file recording its
    architecture); anything unreadable is left to the weights loader's own message."""
    from flair_core.weights import CheckpointError, torch_load

    try:
        state = torch_load(Path(path))
    except (CheckpointError, OSError):
        return False
    return isinstance(state, dict) and "model_config" in state and "method" in state


def cmd_prepare(args: argparse.Namespace) -> None:
    import signal
    import time

    from flair_core.data.builtin import BuiltinDataConfig, generate
    from flair_core.run_config import load_section

    config = load_section(BuiltinDataConfig, "data", args.params, args.set)
    start = time.perf_counter()
    # SIGTERM as an exception, so the partial folder is removed on the way out (a SIGKILL's is removed by the
    # next prepare).
    def stop(number, _frame):
        print(f"flair prepare: stopped by {signal.Signals(number).name}; {args.out} is as it was",
              file=sys.stderr)
        sys.exit(128 + number)

    signal.signal(signal.SIGTERM, stop)
    meta = generate(config, args.out)
    seconds = time.perf_counter() - start
    total = sum(meta["counts"].values())
    counts = ", ".join(f"{k} {v}" for k, v in meta["counts"].items())
    print(f"wrote {args.out}: {counts} images in {seconds:.1f} s ({total / seconds:.0f} images/s)")


def cmd_train(args: argparse.Namespace) -> None:
    import errno
    import logging

    from flair_core.fileio import WriteError
    from flair_core.run_config import load_run_config
    from flair_core.training.loop import Stopped, train

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    config = load_run_config(args.params, args.set)
    # a torchrun worker: nothing left to coordinate it once the agent dies
    if "TORCHELASTIC_RUN_ID" in os.environ:
        from flair_cli.processes import die_with_parent

        die_with_parent()
    try:
        last = train(config, args.out, resume=args.resume)
    except Stopped as stop:  # SIGTERM between two steps: what was written is whole, --resume auto goes on
        print(f"flair train: {stop}", file=sys.stderr)
        raise SystemExit(128 + stop.signal) from None
    except WriteError as err:  # every file was written whole or not at all: the run can go on from here
        if err.errno not in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
            raise
        raise WriteError(err.errno, f"{err.strerror}; earlier checkpoints and metrics are intact: free space "
                                    "and resume with --resume auto", err.filename) from None
    if last is not None:
        print(f"trained {config.method.name}: {last}")


def cmd_evaluate(args: argparse.Namespace) -> None:
    if not Path(args.root).is_dir():  # before loading anything
        raise ValueError(f"benchmark root {args.root} does not exist")
    if args.out and len(args.benchmark) > 1:
        raise ValueError(f"--out names one file but {len(args.benchmark)} benchmarks were given: use "
                         "--out-dir")
    with output_lock(args):
        evaluate_all(args)


def output_lock(args: argparse.Namespace):
    """One writer per evaluation output: the folder of --out-dir, or the file --out names (none without)."""
    import contextlib

    from flair_core.fileio import lock_folder

    if args.out_dir:
        return lock_folder(args.out_dir, "flair evaluate")
    if args.out:
        out = Path(args.out)
        return lock_folder(out.parent, "flair evaluate", lock_file=out.parent / f".{out.name}.lock")
    return contextlib.nullcontext()


def evaluate_all(args: argparse.Namespace) -> None:
    import json
    import time

    import torch

    from flair_core.evaluation.comparison import format_cell, noise_of
    from flair_core.evaluation.headline import headline
    from flair_core.evaluation.records import SUFFIX, save_records
    from flair_core.evaluation.runner import EvalOptions, evaluate_benchmark
    from flair_core.fileio import write_atomic
    from flair_core.models import load_trained

    model = load_trained(args.checkpoint, args.model, args.method)
    options = EvalOptions(modes=tuple(args.mode), topk=args.topk, budget_mb=args.budget_mb,
                          dtype={"fp32": torch.float32, "bf16": torch.bfloat16}[args.precision],
                          background_threshold=args.background_threshold, class_names=tuple(args.class_name),
                          device=args.device)
    for benchmark in args.benchmark:  # one start-up and one model load for all of them
        start = time.perf_counter()
        evaluation = evaluate_benchmark(model, benchmark, args.root, args.split, options)
        metrics = {**evaluation.metrics, f"seconds/{benchmark}": time.perf_counter() - start}
        for key, value in headline(metrics).items():
            print(f"{key:60s} {format_cell(value, *noise_of(metrics, key))}")
        out = Path(args.out_dir) / f"{benchmark}.json" if args.out_dir else args.out and Path(args.out)
        if out:  # each as soon as it is done: an interrupted call keeps what it finished
            out.parent.mkdir(parents=True, exist_ok=True)
            records = out.with_name(out.name.removesuffix(".json") + SUFFIX)
            # first: the JSON's presence means the benchmark is done
            save_records(records, evaluation.records)
            write_atomic(out, json.dumps(metrics, indent=1, sort_keys=True))
            print(f"wrote {out} and {records.name}")


def cmd_attention(args: argparse.Namespace) -> None:
    import io
    import json

    import webdataset as wds
    from PIL import Image

    from flair_core import get_tokenizer, get_transform, load_trained, method_of
    from flair_core.evaluation.attention import attention_maps, render_attention_png

    model = load_trained(args.checkpoint, args.model, args.method)
    method = method_of(model)
    if "attention" not in method.segmentation_modes:
        print(f"{method.name} has no text-conditioned attention: nothing written")
        return
    shards = sorted(str(p) for p in (Path(args.root) / args.split).glob("*.tar"))
    if not shards:
        raise ValueError(f"no {args.split} shards in {args.root}: generate the built-in data with `flair "
                         "prepare`")
    out = Path(args.out or Path(args.checkpoint) / "attention")
    tokenizer, transform = get_tokenizer(model.config), get_transform(model.config, False)
    for i, sample in enumerate(wds.WebDataset(shards, shardshuffle=False, empty_check=False)):
        if i == args.count:
            break
        image = Image.open(io.BytesIO(sample["png"])).convert("RGB")
        caption = json.loads(sample["json"])["sentences"][0]
        maps, _ = attention_maps(model, tokenizer, transform(image), [caption])
        path = render_attention_png(image.resize((256, 256)), maps[0], out / f"{sample['__key__']}.png")
        path.with_suffix(".txt").write_text(caption)
        print(f"wrote {path}: {caption}")


def cmd_compare(args: argparse.Namespace) -> None:
    from flair_core import METHODS
    from flair_core.evaluation import comparison

    table = comparison.build_table(comparison.load_evals(args.eval_dir), METHODS.values())
    curves = comparison.load_loss_curves(args.runs, list(table.runs)) if args.runs else None
    written = comparison.write_reports(table, args.out, curves)
    print(comparison.to_markdown(table))
    print(f"wrote {', '.join(str(p) for p in written)}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="flair", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("models", help="list the built-in model configs with their sizes")
    p.add_argument("--method", default="flair", help="method whose head is counted (default: flair)")
    p.set_defaults(func=cmd_models)

    p = sub.add_parser("methods", help="list the registered methods, their scoring modes and settings")
    p.add_argument("--names", action="store_true", help="names only, one per line (for scripts)")
    p.set_defaults(func=cmd_methods)

    p = sub.add_parser("benchmarks", help="list the evaluation benchmarks (names for evaluate --benchmark)")
    p.add_argument("--names", action="store_true", help="names only, one per line (for scripts)")
    p.set_defaults(func=cmd_benchmarks)

    p = sub.add_parser("prepare", help="generate the built-in scene data set into webdataset shards")
    p.add_argument("--out", required=True, help="output folder (replaced atomically when complete)")
    p.add_argument("--params", action="append", default=[], metavar="FILE",
                   help="YAML params file whose `data:` section is used (repeatable; later files override "
                        "earlier ones key by key)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a data setting, e.g. --set train_images=1024 (repeatable)")
    p.set_defaults(func=cmd_prepare)

    p = sub.add_parser("train", help="train a method (run it under torchrun for several processes or nodes)",
                       description="Train one of the registered methods (`flair methods` lists them; their "
                                   "settings, method.settings.*, are in docs/training.md).")
    p.add_argument("--params", action="append", default=[], metavar="FILE",
                   help="params YAML (repeatable; later files override earlier ones section by section; a "
                        "file's `recipes: {<method>: ...}` applies to the method trained, before --set)")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override one setting, e.g. --set train.lr=1e-3 --set method.name=clip")
    p.add_argument("--out", required=True, help="run folder: config.yaml, metrics.jsonl, checkpoints/")
    p.add_argument("--resume", metavar="auto|PATH",
                   help="'auto': continue from the newest checkpoint in --out if any; or a checkpoint/run "
                        "folder")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("evaluate", help="evaluate a trained model on one benchmark or several")
    p.add_argument("checkpoint", help="run folder, training checkpoint, or weights file (then give --model)")
    p.add_argument("--benchmark", required=True, action="append", metavar="NAME",
                   help="a benchmark `flair benchmarks` lists; repeat it to evaluate several with one "
                        "start-up and model load")
    p.add_argument("--root", default="data/builtin", help="data root of the benchmark")
    p.add_argument("--split", help="benchmark split (built-in: test or val)")
    p.add_argument("--mode", action="append", default=[],
                   help="scoring mode, repeatable; default: every mode the model's method offers (`flair "
                        "methods` lists each method's retrieval and segmentation modes)")
    p.add_argument("--topk", type=int, default=128, help="k of the top-k retrieval mode")
    p.add_argument("--precision", choices=["fp32", "bf16"], default="fp32",
                   help="precision of FLAIR-mode pooling and FILIP's token-wise scoring")
    p.add_argument("--budget-mb", type=float, default=512,
                   help="working-memory budget of FLAIR and FILIP scoring")
    p.add_argument("--background-threshold", type=float, help="segmentation: below it a pixel is background")
    p.add_argument("--class-name", action="append", default=[],
                   help="ADE20K-style class names, in label order")
    p.add_argument("--device", default="cpu")
    p.add_argument("--model", help="model config for a bare weights file")
    p.add_argument("--method", default="flair", help="method for a bare weights file")
    out = p.add_mutually_exclusive_group()
    out.add_argument("--out", help="metrics JSON to write (atomically), for one benchmark; its per-query "
                                   "records go beside it (X.json -> X.queries.npz)")
    out.add_argument("--out-dir", help="folder for <benchmark>.json (metrics, each recall with its 95 %% "
                                       "interval and chance level; built-in retrieval sets also R@1 by fact "
                                       "type and minimal-pair accuracy per twin change, docs/evaluation.md) "
                                       "and <benchmark>.queries.npz (per-query ranks, clusters, fact types "
                                       "and twin-pair score margins, for intervals and paired comparisons), "
                                       "each written when done")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("attention",
                       help="draw a FLAIR model's text-conditioned attention on built-in test images")
    p.add_argument("checkpoint", help="run folder, training checkpoint, or weights file (then give --model)")
    p.add_argument("--root", default="data/builtin", help="built-in data root (its webdataset shards)")
    p.add_argument("--split", default="test")
    p.add_argument("--count", type=int, default=2, help="images, each with its first sentence")
    p.add_argument("--out", help="folder for <key>.png and <key>.txt (default: <checkpoint>/attention)")
    p.add_argument("--model", help="model config for a bare weights file")
    p.add_argument("--method", default="flair", help="method for a bare weights file")
    p.set_defaults(func=cmd_attention)

    p = sub.add_parser("compare",
                       help="one table of every run's key metrics from eval/<run>/<benchmark>.json files")
    p.add_argument("eval_dir",
                   help="folder of <run>/<benchmark>.json files written by `flair evaluate --out`")
    p.add_argument("--out", required=True,
                   help="report folder: compare.md/.csv/.json (dvc.yaml plots draw the CSVs)")
    p.add_argument("--runs", help="folder of run folders: adds their loss curves (train_loss.csv)")
    p.set_defaults(func=cmd_compare)

    p = sub.add_parser("check-weights", help="load a checkpoint (e.g. flair-cc3m-recap.pt) and report")
    p.add_argument("checkpoint", help="a .pt/.pth/.bin or .safetensors file")
    p.add_argument("--model", help="built-in config name or JSON path (default: what a checkpoint of ours "
                                   "records, else ViT-B-16-FLAIR)")
    p.add_argument("--method", default="flair", help="the method of a plain weights file (default: flair)")
    p.add_argument("--allow-nonfinite", action="store_true",
                   help="report tensors holding NaN/inf but exit 0 (default: exit 2)")
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
    except (ValueError, FloatingPointError, OSError) as err:  # the library's input errors are ValueErrors
        print(f"flair {args.command}: error: {one_line(err)}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
