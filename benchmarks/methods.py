"""Training speed of every method at a preset, and FLAIR's batched pooling against a per-pair loop.

    .venv/bin/python benchmarks/methods.py --model tiny-64 --batch 64 --k 4 [--breakdown]

--breakdown: where FLAIR's step spends its time beside CLIP's, on the same towers and batch. Each part is
timed forward+backward in isolation on the step's own activations (detached, so the parts add up to about the
step): image tower, text tower on FLAIR's B·K sub-captions and on CLIP's B, FLAIR's loss terms (TCS pools
every text of an image's set over its tokens; MPS is one matrix of global logits), CLIP's loss, the AdamW
update. Then whole steps with each term alone.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from flair_core import METHODS, create_model, towers
from flair_core.losses import sigmoid_loss_sum
from flair_core.methods.flair import text_set_indices


def synthetic_batch(batch: int, k: int, image_size: int, generator: torch.Generator) -> dict:
    texts = torch.randint(1, 49000, (batch, k, 77), generator=generator)
    # sub-caption lengths as the built-in data's batches have them: 9-36 tokens up to the EOT
    lengths = torch.randint(9, 37, (batch, k), generator=generator)
    columns = torch.arange(77)
    texts[..., 0] = 49406
    texts[columns > lengths[..., None] - 1] = 0
    texts.scatter_(-1, lengths[..., None] - 1, 49407)
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
    batch = synthetic_batch(args.batch, args.k, model.config.vision_cfg.image_size,
                            torch.Generator().manual_seed(0))
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
    print(f"{'flair-naive':11s} {naive:8.3f} {1 / naive:8.2f} {args.batch / naive:10.1f}  per-pair pooling "
          f"loop ({args.batch * (args.batch + args.k - 1)} pool calls): {naive / seconds:.1f}x the batched "
          "step")


def part_seconds(fn, inputs: dict[str, torch.Tensor], steps: int) -> float:
    """Median forward+backward of fn on detached copies of inputs (a fixed random upstream gradient)."""
    leaves = {k: x.detach().requires_grad_(x.is_floating_point()) for k, x in inputs.items()}
    grads = {}

    def run():
        out = fn(leaves)
        outputs = out if isinstance(out, tuple) else (out,)
        total = 0
        for i, o in enumerate(outputs):
            if o.dim() == 0:
                total = total + o
            else:
                g = grads.setdefault(i, torch.randn(o.shape, generator=torch.Generator().manual_seed(i)))
                total = total + (o * g).sum()
        total.backward()

    return time_steps(run, steps)


def breakdown(args: argparse.Namespace) -> None:
    torch.manual_seed(0)
    flair_spec, clip_spec = METHODS["flair"], METHODS["clip"]
    model = create_model(args.model, "flair").train()
    clip_model = create_model(args.model, "clip").train()
    batch = synthetic_batch(args.batch, args.k, model.config.vision_cfg.image_size,
                            torch.Generator().manual_seed(0))
    images, texts = batch["images"], batch["texts"]
    with torch.no_grad():
        out = model(images, texts)
    losses = {w: flair_spec.loss(flair_spec.settings(tcs_weight=w)) for w in (0.5, 1.0, 0.0)}
    clip_loss = clip_spec.loss(clip_spec.settings())

    def image_part(x):
        image_global, image_local = model.encode_image(x["images"])
        return model.image_post(image_global), model.image_post(image_local)

    def text_part(x):
        return model.text_post(model.encode_text(x["texts"])[0])

    parts = {
        "image tower + projection": part_seconds(image_part, {"images": images}, args.steps),
        f"text tower, {args.batch * args.k} sub-captions (FLAIR)": part_seconds(text_part, {"texts": texts},
                                                                                  args.steps),
        f"text tower, {args.batch} sub-captions (CLIP)": part_seconds(text_part, {"texts": texts[:, 0]},
                                                                      args.steps),
        f"text tower, {args.batch * args.k}, one length group": part_seconds(
            lambda x: one_group_call(text_part, x), {"texts": texts}, args.steps),
        **{f"FLAIR loss, {name}": part_seconds(lambda x, w=w: sum(losses[w](x, model).values()), out,
                                               args.steps)
           for w, name in ((0.5, "TCS + MPS (w 0.5)"), (1.0, "TCS alone"), (0.0, "MPS alone"))},
    }
    with torch.no_grad():
        clip_out = clip_model(*clip_loss.inputs(batch))
    parts["CLIP loss"] = part_seconds(lambda x: sum(clip_loss(x, clip_model).values()), clip_out, args.steps)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    parts["AdamW update"] = time_steps(optimizer.step, args.steps)
    print(f"\nparts, forward+backward, median of {args.steps}:")
    for name, seconds in parts.items():
        print(f"  {name:40s} {seconds:7.3f} s")
    # Whole steps, interleaved round by round so that the machine's drift hits every variant alike; each
    # ratio is the median of per-round ratios against FLAIR's default step.
    steps = {f"flair w {w:.1f}": make_step(model, flair_spec.loss(flair_spec.settings(tcs_weight=w)), batch)
             for w in (0.5, 1.0, 0.0)}
    steps["flair w 0.5, one length group"] = one_group(make_step(model,
                                                                 flair_spec.loss(flair_spec.settings()),
                                                                 batch))
    steps["clip"] = make_step(clip_model, clip_loss, batch)
    steps["clip, one length group"] = one_group(make_step(clip_model, clip_loss, batch))
    for step in steps.values():
        step()  # warm-up
    times = {name: [] for name in steps}
    for _ in range(args.steps):
        for name, step in steps.items():
            start = time.perf_counter()
            step()
            times[name].append(time.perf_counter() - start)
    reference = times["flair w 0.5"]
    print(f"whole steps (AdamW included), {args.steps} interleaved rounds:")
    for name, seconds in times.items():
        ratios = sorted(t / r for t, r in zip(seconds, reference))
        print(f"  {name:32s} {statistics.median(seconds):7.3f} s   {statistics.median(ratios):5.2f}x flair w "
              f"0.5 (rounds {ratios[0]:.2f}-{ratios[-1]:.2f})")


def one_group_call(fn, *args):
    groups, towers.LENGTH_GROUPS = towers.LENGTH_GROUPS, 1
    try:
        return fn(*args)
    finally:
        towers.LENGTH_GROUPS = groups


def one_group(step):
    """step, run with the text tower as one padded batch (as before length groups)."""
    return lambda: one_group_call(step)


def make_step(model, loss_fn, batch: dict):
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)

    def step():
        optimizer.zero_grad(set_to_none=True)
        sum(loss_fn(model(*loss_fn.inputs(batch)), model).values()).backward()
        optimizer.step()
        loss_fn.advance()

    return step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="tiny-64")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--k", type=int, default=4)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--breakdown", action="store_true", help="FLAIR's step part by part beside CLIP's")
    args = parser.parse_args()
    if args.breakdown:
        breakdown(args)
        return
    print(f"model={args.model} batch={args.batch} K={args.k} threads={torch.get_num_threads()} fp32, AdamW")
    print(f"{'method':11s} {'step s':>8s} {'steps/s':>8s} {'samples/s':>10s}  loss terms")
    for name, spec in METHODS.items():
        measure(name, spec, args)


if __name__ == "__main__":
    main()
