"""Training batches from webdataset shards (local paths or s3:// URLs) for one rank.

Stages: shard stream (this rank's and this worker's shards, reshuffled every pass, or resampled with
replacement) → tar → sample shuffle buffer → skip (resume) → decode + sub-caption sampling + tokenising →
batches. An epoch is exactly `steps_per_epoch` batches on every rank, so ranks never wait on each other.

Bad samples (no image, unreadable image, malformed caption record, corrupt shard) are skipped, counted and
logged with their key and shard; when more than `max_bad_fraction` of what a worker has read is bad, or a
worker reads nothing usable, loading stops with one clear line.
"""

from __future__ import annotations

import io
import json
import logging
import random
import signal
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import braceexpand
import torch
import webdataset as wds
from PIL import Image
from pydantic import Field

from flair_core.data.captions import (
    SamplingConfig,
    normalise_long_caption,
    sample_rng,
    sample_sub_captions,
    sentence_pool,
)
from flair_core.data.errors import DataError
from flair_core.data.storage import register_s3_scheme
from flair_core.lifetime import die_with_parent
from flair_core.model_config import Frozen

log = logging.getLogger(__name__)
IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp")


class LoaderConfig(Frozen):
    workers: int = Field(2, ge=0, description="DataLoader worker processes per rank")
    shuffle_buffer: int = Field(1000, ge=1)
    resampled: bool = Field(False, description="draw shards with replacement instead of passes over all")
    max_bad_fraction: float = Field(0.05, ge=0.0, le=1.0)
    min_samples_for_bad_check: int = Field(64, ge=1)


@dataclass(frozen=True)
class TextViews:
    """Which texts a method needs per image: K sampled sub-captions, and/or the whole long caption."""

    sampling: SamplingConfig
    long_caption: bool = False


def expand_urls(spec: str | list[str]) -> list[str]:
    """`a/shard-{000000..000009}.tar`, several patterns joined with '::', or a list of URLs."""
    specs = spec if isinstance(spec, list) else spec.split("::")
    return [url for s in specs for url in braceexpand.braceexpand(s)]


class BadSampleTracker:
    """Per worker: counts samples read and skipped, and stops when too many are bad."""

    def __init__(self, config: LoaderConfig):
        self.config = config
        self.seen = self.bad = 0
        self.read = 0  # samples that came out of the shards, before shuffling and decoding

    def count_reads(self, samples: Iterator[dict]) -> Iterator[dict]:
        for sample in samples:
            self.read += 1
            yield sample

    def skip(self, what: str, key: str, shard: str) -> None:
        self.seen += 1
        self.bad += 1
        log.warning("skipped sample %s in %s: %s", key, shard, what)
        self.check()

    def ok(self) -> None:
        self.seen += 1

    def check(self) -> None:
        if self.seen < self.config.min_samples_for_bad_check:
            return
        if self.bad == self.seen:
            raise DataError(f"no readable sample among the first {self.seen} read; see the warnings for "
                            "shards")
        if self.bad > self.config.max_bad_fraction * self.seen:
            raise DataError(
                f"{self.bad} of {self.seen} samples unreadable (more than max_bad_fraction "
                f"{self.config.max_bad_fraction}); see the warnings for keys and shards"
            )

    def shard_error(self, exn: Exception) -> bool:
        """webdataset handler for a shard that cannot be opened or is truncated: count it, go on."""
        self.bad += 1
        self.seen += 1
        log.warning("skipped the rest of a shard: %s", " ".join(str(a) for a in exn.args[:1] + exn.args[-1:]))
        self.check()
        return True


class ShardStream(torch.utils.data.IterableDataset):
    """Endless stream of {"url": ...} for one reader slot (rank × worker); reshuffled every pass."""

    def __init__(self, urls: list[str], seed: int, epoch: int, slot: int, slots: int, resampled: bool,
                 tracker: BadSampleTracker):
        super().__init__()
        self.urls, self.seed, self.epoch = urls, seed, epoch
        self.slot, self.slots, self.resampled = slot, slots, resampled
        self.tracker = tracker

    def __iter__(self) -> Iterator[dict]:
        rng = random.Random(f"{self.seed}:{self.epoch}:{self.slot}")
        if not self.resampled and len(self.urls) < self.slots:
            raise DataError(f"{len(self.urls)} shards cannot feed {self.slots} readers (ranks × workers)")
        mine = self.urls if self.resampled else self.urls[self.slot :: self.slots]
        while True:  # passes over this slot's shards; the epoch length cuts the stream
            read = self.tracker.read
            if self.resampled:
                yield from ({"url": rng.choice(mine)} for _ in mine)
            else:
                yield from ({"url": u} for u in rng.sample(mine, len(mine)))
            # Shards that hold no sample would be read round and round for ever, the worker spinning and
            # deaf to the DataLoader's shutdown.
            if self.tracker.read == read:
                raise DataError(f"no sample in a pass over {len(mine)} shard(s) ({mine[0]}, ...): empty "
                                "shards?")


def decode_image(sample: dict) -> Image.Image:
    ext = next((e for e in IMAGE_EXTENSIONS if e in sample), None)
    if ext is None:
        raise DataError("no image member (jpg/jpeg/png/webp)")
    return Image.open(io.BytesIO(sample[ext])).convert("RGB")


def decode_record(sample: dict) -> dict:
    if "json" not in sample:
        raise DataError("no json caption record")
    record = json.loads(sample["json"])
    if not isinstance(record, dict):
        raise DataError("caption record is not a JSON object")
    return record


class SampleDecoder:
    """Raw tar sample -> (image tensor, text token tensors); bad samples are counted and dropped."""

    def __init__(self, views: TextViews, tokenizer: Callable, transform: Callable, seed: int, epoch: int,
                 tracker: BadSampleTracker):
        self.views, self.tokenizer, self.transform = views, tokenizer, transform
        self.seed, self.epoch, self.tracker = seed, epoch, tracker

    def __call__(self, samples: Iterator[dict]) -> Iterator[dict]:
        for sample in samples:
            key, shard = sample.get("__key__", "?"), sample.get("__url__", "?")
            try:
                decoded = self.decode(sample)
            except (DataError, ValueError, OSError, SyntaxError) as err:  # PIL raises OSError/SyntaxError
                self.tracker.skip(str(err).splitlines()[0] if str(err) else type(err).__name__, key, shard)
                continue
            self.tracker.ok()
            yield decoded

    def decode(self, sample: dict) -> dict:
        record = decode_record(sample)
        pool = sentence_pool(record)
        sub_pool = sentence_pool(record, self.views.sampling.max_sentence_share)
        rng = sample_rng(self.seed, self.epoch, sample["__key__"])
        # Augmentation randomness per sample too, so a resumed run crops exactly as the uninterrupted
        # one. The transforms draw from the CPU generator only: seeding it alone gives
        # torch.manual_seed's crops without the lazy seeding of every accelerator, which cost ~0.8 ms
        # per sample (a third of decoding one).
        with torch.random.fork_rng(devices=[]):
            torch.default_generator.manual_seed(rng.getrandbits(63))
            image = self.transform(decode_image(sample))
        out = {"image": image, "key": sample["__key__"]}
        out["texts"] = self.tokenizer(sample_sub_captions(sub_pool, self.views.sampling, rng))  # (K, C)
        if self.views.long_caption:
            out["long_text"] = self.tokenizer([normalise_long_caption(". ".join(pool))])[0]  # (C,)
        return out


def collate(samples: list[dict]) -> dict:
    batch = {"images": torch.stack([s["image"] for s in samples]), "keys": [s["key"] for s in samples],
             "texts": torch.stack([s["texts"] for s in samples])}  # (B, K, C)
    if "long_text" in samples[0]:
        batch["long_texts"] = torch.stack([s["long_text"] for s in samples])  # (B, C)
    return batch


def _skip(n: int) -> Callable[[Iterator], Iterator]:
    def stage(data: Iterator) -> Iterator:
        for i, item in enumerate(data):
            if i >= n:
                yield item

    return stage


class EpochDataset(torch.utils.data.IterableDataset):
    """One rank's epoch. DataLoader hands batches out round-robin over workers, so batch i comes from the
    worker with role i mod W; resuming after `skip_batches` shifts roles so the order stays the same."""

    def __init__(self, urls, views, tokenizer, transform, batch_size, steps, config, seed, epoch, rank, world,
                 skip_batches):
        super().__init__()
        self.urls, self.views, self.tokenizer, self.transform = urls, views, tokenizer, transform
        self.batch_size, self.steps, self.config, self.seed, self.epoch = (
            batch_size, steps, config, seed, epoch)
        self.rank, self.world, self.skip_batches = rank, world, skip_batches

    def __iter__(self) -> Iterator[dict]:
        workers = max(1, self.config.workers)
        info = torch.utils.data.get_worker_info()
        role = ((info.id if info else 0) + self.skip_batches) % workers
        done = len(range(role, self.skip_batches, workers))  # batches this role made before the resume
        todo = len(range(role, self.steps, workers)) - done
        tracker = BadSampleTracker(self.config)
        pipeline = wds.DataPipeline(
            ShardStream(self.urls, self.seed, self.epoch, self.rank * workers + role, self.world * workers,
                        self.config.resampled, tracker),
            wds.tarfile_to_samples(handler=tracker.shard_error),
            tracker.count_reads,
            wds.shuffle(self.config.shuffle_buffer, initial=min(self.config.shuffle_buffer, 100),
                        rng=random.Random(f"{self.seed}:{self.epoch}:{self.rank}:{role}:samples")),
            _skip(done * self.batch_size),  # before decoding: skipping costs only tar reads
            SampleDecoder(self.views, self.tokenizer, self.transform, self.seed, self.epoch, tracker),
            wds.batched(self.batch_size, collation_fn=collate, partial=False),
        )
        for i, batch in enumerate(pipeline):
            if i >= todo:
                return
            yield batch


def train_loader(
    urls: str | list[str],
    views: TextViews,
    tokenizer: Callable,
    transform: Callable,
    batch_size: int,
    steps_per_epoch: int,
    config: LoaderConfig,
    seed: int = 0,
    epoch: int = 0,
    rank: int = 0,
    world: int = 1,
    skip_batches: int = 0,
) -> torch.utils.data.DataLoader:
    """Batches for one rank and one epoch: exactly `steps_per_epoch - skip_batches` of them, the same ones
    an uninterrupted run would produce from batch `skip_batches` on."""
    register_s3_scheme()
    urls = expand_urls(urls)
    if not urls:
        raise DataError("no shard URLs given")
    if not 0 <= skip_batches <= steps_per_epoch:
        raise DataError(f"skip_batches {skip_batches} outside 0..{steps_per_epoch}")
    dataset = EpochDataset(urls, views, tokenizer, transform, batch_size, steps_per_epoch, config, seed,
                           epoch, rank, world, skip_batches)
    return torch.utils.data.DataLoader(dataset, batch_size=None, num_workers=config.workers,
                                       worker_init_fn=leave_stop_signals_to_the_trainer)


def leave_stop_signals_to_the_trainer(_worker_id: int) -> None:
    """A SIGTERM or Ctrl-C to the process group reaches the loader's workers too: they ignore it and let the
    trainer stop between two steps (a worker that died first would fail that step). They still end with the
    trainer: DataLoader shuts them down, and they exit on their own once their parent is gone."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # A worker busy inside the data set never reads DataLoader's stop message, and it ignores the SIGTERM
    # DataLoader then sends: the kernel kills it when the trainer's process ends (Linux).
    die_with_parent(signal.SIGKILL)
