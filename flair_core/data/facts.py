"""Facts about scenes, the sentences that state them, and which images satisfy a set of facts.

Every caption sentence of the built-in data set states one fact. A query (one sentence, several merged, a
whole caption) is satisfied by an image when all its facts hold there, so retrieval ground truth is the exact
*set* of matching images, computed over a whole split with numpy.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from flair_core.data.scenes import (
    BACKGROUND_STYLES,
    BACKGROUNDS,
    COLOURS,
    PATTERNS,
    REGIONS,
    SHAPES,
    SIZES,
    Scene,
)

NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten")
REGION_PHRASES = {
    "top left": "in the top left corner",
    "top": "along the top",
    "top right": "in the top right corner",
    "left": "on the left side",
    "centre": "in the centre",
    "right": "on the right side",
    "bottom left": "in the bottom left corner",
    "bottom": "along the bottom",
    "bottom right": "in the bottom right corner",
}
PATTERN_WORDS = {"solid": "solid", "striped": "striped", "outlined": "outlined"}
STYLE_WORDS = {"plain": "plain", "gradient": "shaded", "speckled": "speckled"}
RELATIONS = ("left of", "right of", "above", "below")


@dataclass(frozen=True)
class ObjectFact:
    """An object with these attributes exists (None = not stated)."""

    shape: str | None = None
    colour: str | None = None
    size: str | None = None
    pattern: str | None = None
    region: str | None = None


@dataclass(frozen=True)
class RelationFact:
    """A (colour, shape) object stands left of / right of / above / below another (colour, shape) object."""

    colour: str
    shape: str
    relation: str
    other_colour: str
    other_shape: str


@dataclass(frozen=True)
class BackgroundFact:
    colour: str
    style: str | None = None


@dataclass(frozen=True)
class CountFact:
    count: int


Fact = ObjectFact | RelationFact | BackgroundFact | CountFact
FACT_TYPES = {cls.__name__: cls for cls in (ObjectFact, RelationFact, BackgroundFact, CountFact)}
FACT_KINDS = {ObjectFact: "object", RelationFact: "relation", BackgroundFact: "background",
              CountFact: "count"}


def fact_kind(fact: Fact) -> str:
    """What a sentence states: `object` (all five attributes of one object), `relation`, `background` or
    `count`."""
    return FACT_KINDS[type(fact)]


def fact_to_json(fact: Fact) -> dict:
    return {"type": type(fact).__name__, **asdict(fact)}


def fact_from_json(data: dict) -> Fact:
    data = dict(data)
    return FACT_TYPES[data.pop("type")](**data)


def _cap(text: str) -> str:
    return text[0].upper() + text[1:]


def with_article(word: str) -> str:
    return f"an {word}" if word[0] in "aeiou" else f"a {word}"


def fact_sentence(fact: Fact, rng: np.random.Generator) -> str:
    """One sentence stating the fact, in one of several templates (no '.', which splits sentences)."""
    t = int(rng.integers(4))
    if isinstance(fact, ObjectFact):
        f, at, pat = fact, REGION_PHRASES[fact.region], PATTERN_WORDS[fact.pattern]
        return _cap(
            [
                f"{with_article(f.size)} {pat} {f.colour} {f.shape} sits {at}",
                f"{at} there is {with_article(f.size)} {f.colour} {f.shape} that is {pat}",
                f"there is {with_article(f.colour)} {f.shape} {at}; it is {f.size} and {pat}",
                f"one can see {with_article(pat)} {f.shape} in {f.colour} {at}, {f.size} in size",
            ][t]
        )
    if isinstance(fact, RelationFact):
        a, b = f"{fact.colour} {fact.shape}", f"{fact.other_colour} {fact.other_shape}"
        rel = {"left of": "to the left of", "right of": "to the right of", "above": "above", "below": "below"}
        verb = ["is", "stands", "is placed", "appears"][t]
        return f"The {a} {verb} {rel[fact.relation]} the {b}"
    if isinstance(fact, BackgroundFact):
        style = STYLE_WORDS[fact.style] + " " if fact.style else ""
        return _cap(
            [
                f"the background is {style}{fact.colour}",
                f"everything rests on a {style}{fact.colour} background",
                f"the scene is set against a {style}{fact.colour} backdrop",
                f"behind the shapes lies a {style}{fact.colour} surface",
            ][t]
        )
    words = NUMBER_WORDS[fact.count] if fact.count < len(NUMBER_WORDS) else str(fact.count)
    return _cap(
        [
            f"there are {words} objects in the picture",
            f"the image contains {words} shapes in total",
            f"{words} separate shapes are visible",
            f"altogether the scene shows {words} objects",
        ][t]
    )


def scene_facts(scene: Scene) -> tuple[list[ObjectFact], list[RelationFact], list[Fact]]:
    """Object facts (one per object), every unambiguous relation, and the scene-level facts."""
    objects = [
        ObjectFact(o.shape, o.colour, o.size, o.pattern, o.region(scene.grid)) for o in scene.objects
    ]
    relations = []
    for a in scene.objects:
        for b in scene.objects:
            if a is b:
                continue
            if a.col < b.col:
                relations.append(RelationFact(a.colour, a.shape, "left of", b.colour, b.shape))
            if a.row < b.row:
                relations.append(RelationFact(a.colour, a.shape, "above", b.colour, b.shape))
    scene_level = [BackgroundFact(scene.background, scene.background_style), CountFact(len(scene.objects))]
    return objects, relations, scene_level


def flip(relation: RelationFact) -> RelationFact:
    """The same relation stated from the other object ("A left of B" -> "B right of A")."""
    opposite = {"left of": "right of", "right of": "left of", "above": "below", "below": "above"}
    return RelationFact(
        relation.other_colour, relation.other_shape, opposite[relation.relation], relation.colour,
        relation.shape
    )


class FactIndex:
    """Columnar view of a split's scenes for fast satisfaction checks over all images at once."""

    def __init__(self, scenes: list[Scene]):
        self.num_images = len(scenes)
        rows = [
            (i, SHAPES.index(o.shape), list(COLOURS).index(o.colour), SIZES.index(o.size),
             PATTERNS.index(o.pattern), REGIONS.index(o.region(s.grid)), o.row, o.col)
            for i, s in enumerate(scenes)
            for o in s.objects
        ]
        table = np.array(rows, dtype=np.int64).reshape(-1, 8)
        (self.image, self.shape, self.colour, self.size, self.pattern, self.region, self.row,
         self.col) = table.T
        self.background = np.array([list(BACKGROUNDS).index(s.background) for s in scenes])
        self.style = np.array([BACKGROUND_STYLES.index(s.background_style) for s in scenes])
        self.count = np.array([len(s.objects) for s in scenes])

    def _objects(self, shape=None, colour=None, size=None, pattern=None, region=None) -> np.ndarray:
        mask = np.ones(len(self.image), dtype=bool)
        for values, vocab, wanted in (
            (self.shape, SHAPES, shape),
            (self.colour, list(COLOURS), colour),
            (self.size, SIZES, size),
            (self.pattern, PATTERNS, pattern),
            (self.region, REGIONS, region),
        ):
            if wanted is not None:
                mask &= values == vocab.index(wanted)
        return mask

    def satisfied(self, fact: Fact) -> np.ndarray:
        """bool (num_images,): where the fact holds."""
        out = np.zeros(self.num_images, dtype=bool)
        if isinstance(fact, ObjectFact):
            out[self.image[self._objects(fact.shape, fact.colour, fact.size, fact.pattern,
                                         fact.region)]] = True
        elif isinstance(fact, RelationFact):
            a = np.flatnonzero(self._objects(fact.shape, fact.colour))
            b = np.flatnonzero(self._objects(fact.other_shape, fact.other_colour))
            same_image = self.image[a][:, None] == self.image[b][None, :]  # (|A|, |B|)
            key = {"left of": (self.col, 1), "right of": (self.col, -1), "above": (self.row, 1),
                   "below": (self.row, -1)}
            coord, sign = key[fact.relation]
            holds = same_image & (sign * (coord[b][None, :] - coord[a][:, None]) > 0)
            out[self.image[a][holds.any(axis=1)]] = True
        elif isinstance(fact, BackgroundFact):
            out = self.background == list(BACKGROUNDS).index(fact.colour)
            if fact.style is not None:
                out &= self.style == BACKGROUND_STYLES.index(fact.style)
        else:
            out = self.count == fact.count
        return out

    def positives(self, facts: list[Fact]) -> np.ndarray:
        """Indices of the images where every fact holds."""
        mask = np.ones(self.num_images, dtype=bool)
        for fact in facts:
            mask &= self.satisfied(fact)
        return np.flatnonzero(mask)
