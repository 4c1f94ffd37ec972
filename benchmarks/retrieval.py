"""FLAIR-mode and FILIP retrieval scoring at the real sizes against this machine's limits.

    .venv/bin/python benchmarks/retrieval.py --images 1000 --texts 5000

Prints seconds for the FLAIR mode (fp32, bf16), symmetric top-k and global; the original's per-image way
(projections redone per image, one image per call; timed on a subset and extrapolated); the FLOPs the FLAIR
mode needs; the GFLOP/s plain matmul reaches here in fp32 and bf16; the fraction reached; peak RSS. Then
FILIP's token-wise scoring (--filip-* sizes: the main job's test set on the CPU preset by default) in fp32 and
bf16 against the same limits, and against the previous way (every text padded to the full context, fixed
chunks).
"""

from __future__ import annotations

import argparse
import resource
import time

import torch
import torch.nn.functional as F

from flair_core.methods.filip import token_similarities
from flair_core.pooling import TextConditionedPooling
from flair_core.scores import filip_scores, flair_scores, global_scores, topk_scores


def peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def matmul_gflops(dtype: torch.dtype, n: int = 4096, reps: int = 3) -> float:
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    a @ b
    start = time.perf_counter()
    for _ in range(reps):
        a @ b
    return 2 * n**3 * reps / (time.perf_counter() - start) / 1e9


def flair_flops(images: int, texts: int, dim: int, patches: int) -> float:
    """Queries projected once, keys/values once per image, then per pair: attention over L+1 slots
    (scores and weighted sum, 2·2·(L+1)·D) and the output projection (2·D²)."""
    return (texts * 2 * dim**2 + images * patches * 2 * 2 * dim**2
            + images * texts * (4 * (patches + 1) * dim + 2 * dim**2))


@torch.no_grad()
def original_way(pooling, tokens, texts, scale, images: int) -> float:
    """As the original evaluates: one image per call, every text's query projection redone, then cos."""
    targets = F.normalize(texts, dim=-1)
    start = time.perf_counter()
    for i in range(images):
        pooled, _ = pooling(texts[None], tokens[i : i + 1])
        (scale * F.normalize(pooled[0], dim=-1) * targets).sum(-1)
    return time.perf_counter() - start


def padded_filip(image_tokens, text_tokens, text_mask, chunk: int = 64) -> float:
    """The previous FILIP evaluation: fixed text chunks, every text at the full context. Returns seconds."""
    start = time.perf_counter()
    for j in range(0, text_tokens.shape[0], chunk):
        token_similarities(image_tokens, text_tokens[j : j + chunk], text_mask[j : j + chunk])
    return time.perf_counter() - start


def filip(args, limits: dict) -> None:
    torch.manual_seed(0)
    tokens = F.normalize(torch.randn(args.filip_images, args.filip_patches, args.filip_dim), dim=-1)
    texts = F.normalize(torch.randn(args.filip_texts, args.context, args.filip_dim), dim=-1)
    lengths = torch.randint(args.text_lengths[0], args.text_lengths[1] + 1, (args.filip_texts,))
    mask = torch.arange(args.context)[None] < lengths[:, None]  # real tokens first, then padding
    # The needed work: one dot product per (image token, real text token) pair; the reductions are extra.
    flops = 2 * args.filip_images * args.filip_patches * int(lengths.sum()) * args.filip_dim
    print(f"FILIP: {args.filip_images} images x {args.filip_texts} texts, L={args.filip_patches}, "
          f"d={args.filip_dim}, text lengths {args.text_lengths[0]}-{args.text_lengths[1]} of "
          f"{args.context}: {flops / 1e12:.3f} TFLOP")
    times = {}
    for dtype in (torch.float32, torch.bfloat16):
        start = time.perf_counter()
        filip_scores(tokens, texts, mask, torch.tensor(100.0), dtype=dtype, budget_mb=args.budget_mb)
        seconds = times[dtype] = time.perf_counter() - start
        rate = flops / seconds / 1e9
        print(f"FILIP {str(dtype).removeprefix('torch.'):9s} {seconds:7.2f} s  {rate:6.0f} GFLOP/s = "
              f"{100 * rate / limits[dtype]:3.0f}% of matmul   peak RSS {peak_rss_gb():.2f} GB")
    n = min(args.filip_texts, 256)
    seconds = padded_filip(tokens, texts[:n], mask[:n]) * args.filip_texts / n
    print(f"FILIP previous way (padded, chunks of 64) {seconds:7.1f} s (extrapolated from {n} texts): "
          f"{seconds / times[torch.float32]:.1f}x our fp32")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--texts", type=int, default=5000)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--patches", type=int, default=196)
    parser.add_argument("--topk", type=int, default=128)
    parser.add_argument("--budget-mb", type=float, default=512)
    parser.add_argument("--original-images", type=int, default=50, help="images timed the original way")
    parser.add_argument("--filip-images", type=int, default=512)
    parser.add_argument("--filip-texts", type=int, default=5400)
    parser.add_argument("--filip-patches", type=int, default=64, help="image tokens (mini-64: 64)")
    parser.add_argument("--filip-dim", type=int, default=128, help="token dim (mini-64: 128)")
    parser.add_argument("--context", type=int, default=77)
    parser.add_argument("--text-lengths", type=int, nargs=2, default=(8, 24), metavar=("MIN", "MAX"),
                        help="real tokens per text, drawn uniformly (the built-in sub-captions: ~8-24)")
    parser.add_argument("--only-filip", action="store_true", help="skip the FLAIR-mode part")
    args = parser.parse_args()

    torch.manual_seed(0)
    pooling = TextConditionedPooling(args.dim).eval()
    tokens = torch.randn(args.images, args.patches, args.dim)
    texts = torch.randn(args.texts, args.dim)
    image_features = torch.randn(args.images, args.dim)
    scale = torch.tensor(100.0)
    limits = {torch.float32: matmul_gflops(torch.float32), torch.bfloat16: matmul_gflops(torch.bfloat16)}
    print(f"plain matmul here: fp32 {limits[torch.float32]:.0f} GFLOP/s, bf16 {limits[torch.bfloat16]:.0f} "
          f"GFLOP/s; threads={torch.get_num_threads()}, budget {args.budget_mb:.0f} MB")
    if args.only_filip:
        filip(args, limits)
        return
    flops = flair_flops(args.images, args.texts, args.dim, args.patches)
    print(f"{args.images} images x {args.texts} texts, D={args.dim}, L={args.patches}, 8 heads")
    print(f"FLAIR mode needs {flops / 1e12:.2f} TFLOP ({flops / args.images / args.texts / 1e6:.2f} MFLOP "
          "per pair)")

    results, times = {}, {}
    for dtype in (torch.float32, torch.bfloat16):
        start = time.perf_counter()
        results[dtype] = flair_scores(pooling, tokens, texts, scale, dtype=dtype, budget_mb=args.budget_mb)
        seconds = times[dtype] = time.perf_counter() - start
        rate = flops / seconds / 1e9
        print(f"FLAIR mode {str(dtype).removeprefix('torch.'):9s} {seconds:7.1f} s  {rate:6.0f} GFLOP/s = "
              f"{100 * rate / limits[dtype]:3.0f}% of matmul   peak RSS {peak_rss_gb():.2f} GB")
    difference = (results[torch.bfloat16] - results[torch.float32]).abs()
    print(f"bf16 vs fp32 scores: max |diff| {difference.max():.3f}, mean {difference.mean():.4f} (scale "
          f"{scale:.0f})")

    start = time.perf_counter()
    topk_scores(pooling, image_features, tokens, texts, scale, args.topk)
    print(f"top-k (k={args.topk}, symmetric) {time.perf_counter() - start:7.1f} s   peak RSS "
          f"{peak_rss_gb():.2f} GB")
    start = time.perf_counter()
    global_scores(image_features, texts, scale)
    print(f"global                       {time.perf_counter() - start:7.3f} s")
    n = min(args.original_images, args.images)
    seconds = original_way(pooling, tokens, texts, scale, n) * args.images / n
    print(f"original way (1 image/call)  {seconds:7.1f} s  (extrapolated from {n} images): "
          f"{seconds / times[torch.float32]:.1f}x our fp32, {seconds / times[torch.bfloat16]:.1f}x our bf16")
    filip(args, limits)

if __name__ == "__main__":
    main()
