"""Long captions -> sentences -> K sub-captions per image (FLAIR_SPEC §5.3, with the off-by-one fixed).

A sub-caption merges m sentences of the image's pool, m drawn from 1..`max_sentences` (or fixed), either a
consecutive window or a random merge. Randomness comes from a `random.Random` per sample, seeded from
(seed, epoch, sample key), so a sample's sub-captions do not depend on which rank or worker reads it.
"""

from __future__ import annotations

import random
import re
import zlib
from typing import Literal

from pydantic import Field

from flair_core.data.errors import DataError
from flair_core.model_config import Frozen

DREAMLIP_FIELDS = (
    "raw_caption",
    "shortIB_captions",
    "longIB_captions",
    "shortSV_captions",
    "longSV_captions",
    "shortLLA_captions",
    "longLLA_captions",
)
_SPLIT = re.compile(r"\n|</s>|\.")


def split_sentences(text: str) -> list[str]:
    """Split at newlines, literal `</s>` and every '.', strip, drop empties (the original's splitter)."""
    return [piece.strip() for piece in _SPLIT.split(text) if piece.strip()]


def normalise_long_caption(text: str) -> str:
    """Evaluation-side long captions are split and re-joined with '. ', as the training sub-captions are."""
    return ". ".join(split_sentences(text))


def sentence_pool(record: dict, max_share: float | None = None) -> list[str]:
    """The sentences of one caption record, whatever layout it comes in.

    * built-in scenes and pre-split data: `sentences` (a list); with `max_share`, those whose
      `sentence_share` (share of the data set's images the sentence is true of) exceeds it are left out,
      unless that would leave none;
    * DreamLIP recaptions (CC3M/CC12M/YFCC15M-recap): the seven caption fields, each a list of sentences or a
      string (split here), concatenated in the original's order;
    * PixelProse and plain long captions: `caption` (one string).
    """
    if isinstance(record.get("sentences"), list):
        sentences, shares = record["sentences"], record.get("sentence_share")
        if max_share is not None and isinstance(shares, list) and len(shares) == len(sentences):
            specific = [s for s, share in zip(sentences, shares, strict=True) if share <= max_share]
            sentences = specific if any(isinstance(s, str) and s.strip() for s in specific) else sentences
        pool = [s.strip() for s in sentences if isinstance(s, str) and s.strip()]
    elif any(field in record for field in DREAMLIP_FIELDS):
        pool = []
        for field in DREAMLIP_FIELDS:
            value = record.get(field)
            if isinstance(value, str):
                pool += split_sentences(value)
            elif isinstance(value, list):
                pool += [s.strip() for s in value if isinstance(s, str) and s.strip()]
    elif isinstance(record.get("caption"), str):
        pool = split_sentences(record["caption"])
    else:
        raise DataError("caption record has none of 'sentences', 'caption' or the DreamLIP caption fields")
    if not pool:
        raise DataError("caption record has no non-empty sentence")
    return pool


class SamplingConfig(Frozen):
    k: int = Field(8, ge=1, description="sub-captions per image")
    max_sentences: int = Field(3, ge=1, description="sub_caption_length: sentences merged per sub-caption")
    length_mode: Literal["random", "fixed"] = Field("random", description="m ~ U{1..max} or m = max")
    merge: Literal["mixed", "consecutive", "random"] = Field(
        "mixed", description="mixed: consecutive window or random merge with probability 1/2 each (original)"
    )
    max_sentence_share: float | None = Field(
        None, gt=0, le=1,
        description="leave out sentences true of more than this share of images (built-in data)")
    # The original draws window starts from range(n - m), so the last sentence never appears in a window.
    # False reproduces it bit for bit (only for comparing with the original's outputs).
    include_last_window: bool = True


def sample_sub_captions(pool: list[str], config: SamplingConfig, rng: random.Random) -> list[str]:
    """K sub-captions from a sentence pool; draws from `rng` in the original's order (§5.3)."""
    if not pool:
        raise DataError("cannot sample sub-captions from an empty sentence pool")
    n = len(pool)
    out = []
    for _ in range(config.k):
        m = config.max_sentences if config.length_mode == "fixed" else rng.randint(1, config.max_sentences)
        if m == 1:
            out.append(rng.choice(pool))
            continue
        consecutive = {"consecutive": True, "random": False}.get(config.merge)
        if consecutive is None:
            consecutive = rng.random() < 0.5
        if consecutive:
            if m >= n:
                out.append(". ".join(pool))
            else:
                starts = n - m + 1 if config.include_last_window else n - m
                start = rng.sample(range(starts), 1)[0]
                out.append(". ".join(pool[start : start + m]))
        elif n >= m:
            out.append(". ".join(rng.sample(pool, m)))
        else:
            out.append(". ".join(rng.choice(pool) for _ in range(m)))
    return out


def sample_rng(seed: int, epoch: int, key: str) -> random.Random:
    """A per-sample generator: same (seed, epoch, key) -> same draws on any rank or worker."""
    return random.Random(zlib.crc32(f"{seed}:{epoch}:{key}".encode()))
