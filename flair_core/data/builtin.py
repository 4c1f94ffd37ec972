"""Generating the built-in data set into webdataset shards plus evaluation query sets.

Layout of the output folder:
    meta.json                      vocabulary, config, counts
    {train,val,test}/shard-*.tar   <key>.png, <key>.json (sentences, caption, short caption, scene);
                                   val/test also <key>.seg.png (class map) and <key>.inst.png (instances)
    {val,test}_queries.json        retrieval sets: fine_grained, long, standard — texts, source image, the
                                   set of images that satisfy each text and its `fact_type`; per twin pair
                                   (images 2p, 2p + 1) what tells them apart (`twin_change`)
    classification/shard-*.tar     <key>.png, <key>.cls (single-object images, class = shape)
"""

from __future__ import annotations

import io
import json
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path
from typing import Literal

import numpy as np
import webdataset as wds
from PIL import Image
from pydantic import Field, field_validator, model_validator

from flair_core.data.facts import (
    BackgroundFact,
    CountFact,
    Fact,
    FactIndex,
    ObjectFact,
    fact_kind,
    fact_sentence,
    fact_to_json,
    flip,
    scene_facts,
    with_article,
)
from flair_core.data.scenes import (
    BACKGROUNDS,
    COLOURS,
    PATTERNS,
    REGIONS,
    SHAPES,
    SIZES,
    Scene,
    random_scene,
    render,
    render_single_object,
    twin_change,
    twin_scene,
)
from flair_core.fileio import lock_folder
from flair_core.model_config import Frozen

SPLITS = ("train", "val", "test")
SPLIT_IDS = {"train": 0, "val": 1, "test": 2, "classification": 3}
QUERY_SETS = ("fine_grained", "long", "standard")
# Each query's fact type, for diagnostics by type: a fine-grained sentence's fact kind (`object` or
# `relation`, `facts.fact_kind`; background and count sentences are never queries alone), `merged` for 2–3
# sentences joined (any kinds), and one type for each whole-caption set. An object sentence states all five
# attributes of its object: which one a model misses is measured by the twin pairs (`twin_change`).
MERGED, LONG_CAPTION, SHORT_CAPTION = "merged", "long_caption", "short_caption"
# Named difficulty levels: the layout settings a level fixes unless a params file sets them itself.
# "hard" is the original set (5–8 objects of ~8 px at 64 px); "easy" has 2–4 objects of ~12–18 px and one
# relation per caption, which tiny CPU models learn within minutes (docs/recipes.md has the runs).
LEVELS = {
    "hard": {"grid": 4, "min_objects": 5, "max_objects": 8, "relations_per_caption": 2},
    "easy": {"grid": 3, "min_objects": 2, "max_objects": 4, "relations_per_caption": 1},
}


class BuiltinDataConfig(Frozen):
    level: Literal["easy", "hard"] = Field("hard",
                                           description="named difficulty: fills the layout settings below")
    image_size: int = Field(64, ge=16, description="pixels per side")
    grid: int = Field(4, ge=2, le=8, description="layout cells per side")
    min_objects: int = Field(5, ge=1)
    max_objects: int = Field(8, ge=1)
    train_images: int = Field(8192, ge=0)
    val_images: int = Field(256, ge=0, description="even: twin pairs")
    test_images: int = Field(512, ge=0, description="even: twin pairs")
    classification_images: int = Field(600, ge=0)
    relations_per_caption: int = Field(2, ge=0)
    merged_queries_per_image: int = Field(2, ge=0, description="fine-grained queries merging 2-3 sentences")
    shard_size: int = Field(1000, ge=1)
    seed: int = 0

    @model_validator(mode="before")
    @classmethod
    def _fill_level(cls, data):
        if isinstance(data, dict):
            level = data.get("level", "hard")
            data = {**LEVELS.get(level, {}), **data}  # settings given explicitly win over the level's
        return data

    @model_validator(mode="after")
    def _consistent(self) -> BuiltinDataConfig:
        if self.min_objects > self.max_objects:
            raise ValueError(f"min_objects {self.min_objects} > max_objects {self.max_objects}")
        if self.image_size < 8 * self.grid:
            raise ValueError(f"image_size {self.image_size} leaves cells under 8 px on a {self.grid}-cell "
                             "grid")
        if self.max_objects > self.grid**2:
            raise ValueError(f"max_objects {self.max_objects} does not fit a {self.grid}×{self.grid} grid")
        return self

    @field_validator("val_images", "test_images")
    @classmethod
    def _even(cls, value: int) -> int:
        if value % 2:
            raise ValueError("must be even (evaluation scenes come in twin pairs)")
        return value


def split_size(config: BuiltinDataConfig, split: str) -> int:
    return getattr(config, f"{split}_images")


def scene_rng(config: BuiltinDataConfig, split: str, index: int) -> np.random.Generator:
    return np.random.default_rng([config.seed, SPLIT_IDS[split], index])


def split_scenes(config: BuiltinDataConfig, split: str) -> Iterator[tuple[str, Scene, str]]:
    """(key, scene, how it was made). Evaluation splits alternate a scene and its hard-negative twin."""
    for index in range(split_size(config, split)):
        key = f"{split}-{index:07d}"
        if split == "train" or index % 2 == 0:
            rng = scene_rng(config, split, index)
            yield key, random_scene(rng, config.grid, config.min_objects, config.max_objects), "random"
        else:
            base_rng = scene_rng(config, split, index - 1)
            base = random_scene(base_rng, config.grid, config.min_objects, config.max_objects)
            twin, kind = twin_scene(base, scene_rng(config, split, index))
            yield key, twin, f"twin:{kind}"


def long_caption(scene: Scene, relations: int, rng: np.random.Generator) -> tuple[list[str], list[Fact]]:
    """Sentences (shuffled) and the fact each states: every object, some relations, the scene."""
    objects, all_relations, scene_level = scene_facts(scene)
    picked = [all_relations[i] for i in rng.permutation(len(all_relations))[:relations]]
    picked = [flip(r) if rng.random() < 0.5 else r for r in picked]
    facts: list[Fact] = [*objects, *picked, *scene_level]
    order = rng.permutation(len(facts))
    facts = [facts[i] for i in order]
    return [fact_sentence(f, rng) for f in facts], facts


def short_caption(scene: Scene, rng: np.random.Generator) -> tuple[str, list[Fact]]:
    """A COCO-like one-liner: count, background colour and two objects by colour and shape."""
    a, b = (scene.objects[i] for i in rng.choice(len(scene.objects), size=2, replace=False))
    n = len(scene.objects)
    text = (f"{n} shapes on a {scene.background} background, among them {with_article(a.colour)} {a.shape} "
            f"and {with_article(b.colour)} {b.shape}")
    facts = [CountFact(n), BackgroundFact(scene.background), ObjectFact(a.shape, a.colour),
             ObjectFact(b.shape, b.colour)]
    return text, facts


def _png(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


class FactShares:
    """The share of a split's images where a fact holds; facts repeat across images, so each is counted
    once."""

    def __init__(self, scenes: list[Scene]):
        self.index = FactIndex(scenes)
        self.cache: dict[Fact, float] = {}

    def __call__(self, fact: Fact) -> float:
        if fact not in self.cache:
            self.cache[fact] = round(float(self.index.satisfied(fact).mean()), 6)
        return self.cache[fact]


def scene_sample(config: BuiltinDataConfig, split: str, key: str, scene: Scene, origin: str,
                 shares: FactShares) -> tuple[dict, dict]:
    """The shard sample of one scene and what the query builder needs (facts, short caption)."""
    rng = np.random.default_rng([config.seed, SPLIT_IDS[split], int(key.rsplit("-", 1)[1]), 1])
    rendered = render(scene, config.image_size, rng)
    sentences, facts = long_caption(scene, config.relations_per_caption, rng)
    short, short_facts = short_caption(scene, rng)
    record = {
        "sentences": sentences,
        # per sentence, the share of the split's images it is true of: lets training leave out sentences
        # (background, count) that are false negatives for most of a batch (`sampling.max_sentence_share`)
        "sentence_share": [shares(f) for f in facts],
        "caption": ". ".join(sentences) + ".",
        "short_caption": short,
        "scene": {**asdict(scene), "origin": origin},
    }
    sample = {"__key__": key, "png": _png(rendered.image), "json": record}
    if split != "train":
        record["facts"] = [fact_to_json(f) for f in facts]
        sample["seg.png"] = _png(rendered.classes)
        sample["inst.png"] = _png(rendered.instances)
    return sample, {"sentences": sentences, "facts": facts, "short": (short, short_facts), "rng": rng}


def build_queries(scenes: list[Scene], extras: list[dict], merged_per_image: int) -> dict:
    """Retrieval sets over one split; positives = every image satisfying all of a text's facts."""
    index = FactIndex(scenes)
    sets = {name: {"texts": [], "source": [], "positives": [], "fact_type": []} for name in QUERY_SETS}

    def add(name: str, text: str, source: int, facts: list[Fact], fact_type: str) -> None:
        positives = index.positives(facts)
        assert source in positives, f"query does not hold for its own image: {text}"
        sets[name]["texts"].append(text)
        sets[name]["source"].append(source)
        sets[name]["positives"].append(positives.tolist())
        sets[name]["fact_type"].append(fact_type)

    for i, extra in enumerate(extras):
        sentences, facts, rng = extra["sentences"], extra["facts"], extra["rng"]
        specific = [j for j, f in enumerate(facts) if not isinstance(f, BackgroundFact | CountFact)]
        for j in specific:  # each object or relation sentence alone
            add("fine_grained", sentences[j], i, [facts[j]], fact_kind(facts[j]))
        for _ in range(merged_per_image):  # merged sub-captions, as FLAIR samples them
            m = int(rng.integers(2, 4))
            chosen = sorted(rng.choice(len(facts), size=min(m, len(facts)), replace=False))
            add("fine_grained", ". ".join(sentences[j] for j in chosen), i, [facts[j] for j in chosen],
                MERGED)
        add("long", ". ".join(sentences), i, facts, LONG_CAPTION)
        add("standard", extra["short"][0], i, extra["short"][1], SHORT_CAPTION)
    return sets


def twin_changes(listed: list[tuple[str, Scene, str]]) -> list[str]:
    """Per twin pair of an evaluation split (scenes 2p and 2p + 1), what tells them apart
    (`scenes.twin_change`)."""
    return [twin_change(scene, twin, origin.removeprefix("twin:"))
            for (_, scene, _), (_, twin, origin) in zip(listed[::2], listed[1::2], strict=True)]


def generate(config: BuiltinDataConfig, out: Path, splits: tuple[str, ...] = SPLITS) -> dict:
    """Write the data set to `out` atomically (a temporary sibling folder renamed at the end), as the one
    writer of `out` (a second raises FolderBusy naming the first)."""
    out = Path(out)
    with lock_folder(out, "flair prepare", lock_file=out.parent / f".{out.name}.lock"):
        _recover(out)
        return _generate(config, out, splits)


def _recover(out: Path) -> None:
    """What a writer killed before its clean-up left beside `out` (only called under `out`'s lock, so no live
    writer owns them): partial folders are removed; a `.previous` folder is the last complete data set when
    `out` itself is missing (killed between the two renames of the swap), and stale otherwise."""
    for partial in out.parent.glob(f".{out.name}.partial-*"):
        shutil.rmtree(partial, ignore_errors=True)
    previous = out.with_name(f".{out.name}.previous")
    if previous.exists() and not out.exists():
        previous.rename(out)
    shutil.rmtree(previous, ignore_errors=True)


def _generate(config: BuiltinDataConfig, out: Path, splits: tuple[str, ...]) -> dict:
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    tmp.chmod(0o755)
    try:
        counts = {}
        for split in splits:
            (tmp / split).mkdir()
            listed = list(split_scenes(config, split))
            scenes = [scene for _, scene, _ in listed]
            shares = FactShares(scenes)
            extras = []
            with wds.ShardWriter(str(tmp / split / "shard-%06d.tar"), maxcount=config.shard_size,
                                 verbose=0) as sink:
                for key, scene, origin in listed:
                    sample, extra = scene_sample(config, split, key, scene, origin, shares)
                    sink.write(sample)
                    if split != "train":
                        extras.append(extra)
            counts[split] = split_size(config, split)
            if split != "train" and scenes:
                queries = build_queries(scenes, extras, config.merged_queries_per_image)
                keys = [f"{split}-{i:07d}" for i in range(len(scenes))]
                (tmp / f"{split}_queries.json").write_text(json.dumps(
                    {"images": keys, "sets": queries, "twin_change": twin_changes(listed)}))
        (tmp / "classification").mkdir()
        with wds.ShardWriter(str(tmp / "classification" / "shard-%06d.tar"), maxcount=config.shard_size,
                             verbose=0) as sink:
            for index in range(config.classification_images):
                image, label = render_single_object(scene_rng(config, "classification", index),
                                                    config.image_size)
                sink.write({"__key__": f"classification-{index:07d}", "png": _png(image), "cls": label})
        counts["classification"] = config.classification_images
        meta = {
            "config": config.model_dump(),
            "counts": counts,
            "classes": ["background", *SHAPES],
            "vocabulary": {"shapes": SHAPES, "colours": list(COLOURS), "sizes": SIZES, "patterns": PATTERNS,
                           "regions": REGIONS, "backgrounds": list(BACKGROUNDS)},
        }
        (tmp / "meta.json").write_text(json.dumps(meta, indent=1))
        # Swap in the new folder only when it is complete; the old one is removed last.
        previous = out.with_name(f".{out.name}.previous")
        if out.exists():
            out.rename(previous)
        tmp.rename(out)
        shutil.rmtree(previous, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return meta
