"""Where the time goes: each method's training step at its recipe, part by part, and the main job's timeline.

    .venv/bin/python benchmarks/step_profile.py --params params/cpu.yaml --data data/builtin [--steps 12]
    .venv/bin/python benchmarks/step_profile.py --timeline  # the newest main job's flow runs, from Prefect

Step profile: every method is built with its recipe (the real `Trainer`, real shards, its loader) and the
methods take their steps round by round, so the machine's drift hits them alike; step ratios against CLIP are
medians of per-round ratios. Per method, in seconds per step:
* data wait: what the step waited for its batch (the loader's workers decode in parallel); decode: the CPU a
  batch costs to read, decode, crop and tokenise (measured in-process, outside the step);
* image / text tower: forward+backward of the towers alone on the step's own inputs (the text tower on exactly
  the ids the method encodes), detached, with a fixed random upstream gradient;
* loss: forward+backward of the method's loss terms alone (FLAIR's pooling included), on detached outputs;
* rest: the step minus the parts above: projections, autograd's bookkeeping and the loader's worker competing
  for the cores (with `--set loader.workers=0` decoding is in `data wait` instead). Parts are timed apart from
  the step, so on a noisy machine this can come out slightly negative;
* optimizer: AdamW's update, logit-scale clamp and scheduler;
* validation and checkpoint: one of each, timed, spread over the steps between them at the recipe's cadence.

Timeline: the flow runs of the newest `make demo` (one per method, back to back or overlapping) with each
task's start and duration, from the Prefect server the services run
(`eval "$(.venv/bin/python -m services env)"`).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch
from methods import time_steps  # benchmarks/methods.py: median of timed calls after a warm-up

from flair_core.methods import METHODS


def as_tuple(out) -> tuple:
    return tuple(o for o in out if o is not None) if isinstance(out, tuple) else (out,)


def tower_part(fn, x: torch.Tensor, steps: int) -> float:
    """Median forward+backward of one tower on detached inputs, with a fixed random upstream gradient."""
    grads: list[torch.Tensor] = []

    def run():
        outputs = as_tuple(fn(x))
        if not grads:
            gen = torch.Generator().manual_seed(0)
            grads.extend(torch.randn(o.shape, generator=gen) for o in outputs)
        sum((o * g).sum() for o, g in zip(outputs, grads, strict=True)).backward()

    return time_steps(run, steps)


class MethodProfile:
    """One method's real trainer, loader and the parts of its step."""

    def __init__(self, method: str, args: argparse.Namespace, out: Path):
        from flair_core import get_tokenizer, get_transform
        from flair_core.data.loader import train_loader
        from flair_core.run_config import load_run_config
        from flair_core.training.loop import Trainer, shard_urls

        self.method = method
        overrides = [f"method.name={method}", f"train.shards={args.data}/train", *args.set]
        self.config = load_run_config(args.params, overrides)
        self.trainer = Trainer(self.config, out / method)
        t = self.config.train
        tokenizer = get_tokenizer(self.trainer.head.config)
        transform = get_transform(self.trainer.head.config, train=True)

        def loader(workers: int):
            return train_loader(shard_urls(t.shards), self.trainer.views, tokenizer, transform, t.batch_size,
                                self.trainer.steps_per_epoch,
                                self.config.loader.model_copy(update={"workers": workers}), seed=t.seed)

        self.batches = iter(loader(self.config.loader.workers))
        self.decode_batches = loader(0)  # in-process: what a batch costs the loader's worker
        self.step_seconds: list[float] = []
        self.wait_seconds: list[float] = []
        self.optimizer_seconds: list[float] = []
        self.tower_calls: dict[str, tuple[str, torch.Tensor]] = {}  # tower -> (the head's method, its input)
        self._capture_tower_inputs()

    def _capture_tower_inputs(self) -> None:
        """Record what the method's forward hands each tower (its images, and exactly the ids it encodes)."""
        head = self.trainer.head
        for name in ("encode_image", "encode_text", "encode_text_global"):
            original = getattr(head, name, None)
            if original is None:  # a tree before encode_text_global (benchmarking an older commit)
                continue

            def wrapped(x, _original=original, _name=name):
                self.tower_calls.setdefault("image" if _name == "encode_image" else "text",
                                            (_name, x.detach().clone()))
                return _original(x)

            setattr(head, name, wrapped)

    def step(self) -> None:
        start = time.perf_counter()
        batch = self.batch = next(self.batches)
        loaded = time.perf_counter()
        self.trainer.accumulate_gradients(batch)
        backward = time.perf_counter()
        self.trainer._optimizer_step()
        end = time.perf_counter()
        self.wait_seconds.append(loaded - start)
        self.optimizer_seconds.append(end - backward)
        self.step_seconds.append(end - start)

    def loss_part(self, steps: int) -> float:
        """Median forward+backward of the method's loss alone, on the model's (detached) outputs for a
        batch."""
        head, loss_fn = self.trainer.head, self.trainer.loss_fn
        with torch.no_grad():
            out = head(*loss_fn.inputs(self.batch))
        leaves = {k: v.detach().requires_grad_(v.is_floating_point()) for k, v in out.items()}

        def run():
            sum(loss_fn(leaves, head).values()).backward()

        return time_steps(run, steps)

    def parts(self, steps: int) -> dict[str, float]:
        head, t = self.trainer.head, self.config.train
        for name in ("encode_image", "encode_text", "encode_text_global"):  # the class's own methods again
            head.__dict__.pop(name, None)
        batches = iter(self.decode_batches)
        decode = []
        for _ in range(3):
            start = time.perf_counter()
            next(batches)
            decode.append(time.perf_counter() - start)
        image, text = (tower_part(getattr(head, name), x, steps)
                       for name, x in (self.tower_calls["image"], self.tower_calls["text"]))
        loss = self.loss_part(steps)
        start = time.perf_counter()
        self.trainer._validate()
        validation = time.perf_counter() - start
        start = time.perf_counter()
        self.trainer._checkpoint()
        checkpoint = time.perf_counter() - start
        head.zero_grad(set_to_none=True)
        median_step = statistics.median(self.step_seconds)
        forward_backward = median_step - statistics.median(self.wait_seconds) - statistics.median(
            self.optimizer_seconds)
        texts = self.tower_calls["text"][1]
        lengths = texts.reshape(-1, texts.shape[-1]).argmax(-1) + 1
        return {
            "data wait": statistics.median(self.wait_seconds),
            "decode (worker CPU)": statistics.median(decode),
            "image tower": image,
            "text tower": text,
            "loss": loss,
            "rest (step - parts)": forward_backward - image - text - loss,
            "optimizer": statistics.median(self.optimizer_seconds),
            "validation (amortised)": validation / t.validate_every if t.validate_every else 0.0,
            "checkpoint (amortised)": checkpoint / t.checkpoint_every,
            "step (median, wall)": median_step,
            "texts per step": float(lengths.numel()),
            "text tokens per step": float(lengths.sum()),
            "validation (one)": validation,
        }


def profile_steps(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory(prefix="flair-profile-") as tmp:
        profiles = [MethodProfile(m, args, Path(tmp)) for m in args.methods]
        print(f"params {' '.join(args.params)} {' '.join(args.set)}; data {args.data}; threads "
              f"{torch.get_num_threads()}; {args.steps} rounds of one step per method after 2 warm-up rounds")
        for _ in range(2):
            for p in profiles:
                p.step()
        for p in profiles:
            p.step_seconds.clear(), p.wait_seconds.clear(), p.optimizer_seconds.clear()
        for _ in range(args.steps):
            for p in profiles:
                p.step()
        parts = {p.method: p.parts(args.steps) for p in profiles}
    names = list(parts)
    print(f"\n{'seconds per step':26s}" + "".join(f"{n:>10s}" for n in names))
    for row in next(iter(parts.values())):
        fmt = "{:10.0f}" if row.startswith("text") and "tower" not in row else "{:10.3f}"
        print(f"{row:26s}" + "".join(fmt.format(parts[n][row]) for n in names))
    if "clip" in names:
        clip = next(p for p in profiles if p.method == "clip")
        print(f"{'step / CLIP step (rounds)':26s}", end="")
        for p in profiles:
            ratios = sorted(s / c for s, c in zip(p.step_seconds, clip.step_seconds, strict=True))
            print(f"{statistics.median(ratios):10.2f}", end="")
        print()
    for p in profiles:
        t = p.config.train
        total = t.epochs * p.trainer.steps_per_epoch
        whole = parts[p.method]["step (median, wall)"] * total
        extra = (parts[p.method]["validation (one)"] * (total // t.validate_every if t.validate_every else 0)
                 + parts[p.method]["checkpoint (amortised)"] * total)
        print(f"{p.method}: {total} steps ≈ {whole:.0f} s of steps + {extra:.0f} s of validation and "
              "checkpoints")


def timeline(args: argparse.Namespace) -> None:
    """The newest main job's flow runs of `pretrain-eval` and their tasks, from the Prefect API."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowFilter, FlowFilterName, FlowRunFilter, TaskRunFilter
    from prefect.client.schemas.sorting import FlowRunSort

    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(flow_filter=FlowFilter(name=FlowFilterName(any_=["pretrain-eval"])),
                                     sort=FlowRunSort.START_TIME_DESC, limit=args.runs)
        runs = sorted((r for r in runs if r.start_time), key=lambda r: r.start_time)
        if not runs:
            raise SystemExit("no pretrain-eval flow run on this Prefect server")
        origin = runs[0].start_time
        print(f"{'flow run / task':44s} {'start s':>8s} {'seconds':>8s}  state")
        for run in runs:
            end = run.end_time or run.start_time
            method = (run.parameters or {}).get("method", "?")
            print(f"{run.name + ' (' + method + ')':44s} {(run.start_time - origin).total_seconds():8.1f} "
                  f"{(end - run.start_time).total_seconds():8.1f}  {run.state_name}")
            tasks = client.read_task_runs(flow_run_filter=FlowRunFilter(id={"any_": [run.id]}),
                                          task_run_filter=TaskRunFilter())
            for task in sorted((t for t in tasks if t.start_time), key=lambda t: t.start_time):
                seconds = ((task.end_time or task.start_time) - task.start_time).total_seconds()
                print(f"  {task.name:42s} {(task.start_time - origin).total_seconds():8.1f} {seconds:8.1f}  "
                      f"{task.state_name}")
        ends = [r.end_time for r in runs if r.end_time]
        if ends:
            print(f"first flow run start to last end: {(max(ends) - origin).total_seconds():.0f} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--params", action="append", default=None,
                        help="params file(s) (default params/cpu.yaml)")
    parser.add_argument("--data", default="data/builtin", help="built-in data folder (flair prepare --out)")
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE")
    parser.add_argument("--steps", type=int, default=12, help="measured rounds (one step per method each)")
    parser.add_argument("--timeline", action="store_true",
                        help="print the newest main job's timeline instead")
    parser.add_argument("--runs", type=int, default=4, help="flow runs the timeline shows")
    args = parser.parse_args()
    args.params = args.params or ["params/cpu.yaml"]
    if args.timeline:
        timeline(args)
    else:
        profile_steps(args)


if __name__ == "__main__":
    main()
