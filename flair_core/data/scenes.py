"""The built-in data set: procedural scenes for fine-grained, localised image–text matching.

Each image holds 5–8 objects (shape, colour, size, pattern, region) on a varied background. Its long caption
has one sentence per object, a few relation sentences and scene sentences, in shuffled order and varied
templates, so no single sentence describes the whole image and captions run past 77 tokens. Every sentence is
generated from a *fact*, so for any query the set of images that satisfy it is computed exactly (`facts.py`).
Evaluation splits are built from twin scenes that differ in one attribute of one object, or swap colours or
positions between two objects: hard negatives that only attribute binding separates.

Scenes are deterministic by (seed, split, index) — independent of sharding or worker count.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np
from PIL import Image, ImageDraw

SHAPES = ("circle", "square", "triangle", "diamond", "cross", "ring")
COLOURS = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (50, 80, 220),
    "yellow": (240, 220, 40),
    "purple": (140, 60, 190),
    "orange": (245, 140, 30),
    "white": (245, 245, 245),
    "black": (20, 20, 20),
}
SIZES = ("small", "large")
PATTERNS = ("solid", "striped", "outlined")
REGIONS = ("top left", "top", "top right", "left", "centre", "right", "bottom left", "bottom", "bottom right")
BACKGROUNDS = {
    "gray": (128, 128, 128),
    "beige": (215, 200, 170),
    "teal": (60, 130, 130),
    "navy": (35, 45, 85),
    "pink": (225, 175, 190),
}
BACKGROUND_STYLES = ("plain", "gradient", "speckled")
ATTRIBUTES = ("shape", "colour", "size", "pattern")
TWIN_KINDS = ("attribute", "swap_colours", "swap_positions")


@dataclass(frozen=True)
class SceneObject:
    shape: str
    colour: str
    size: str
    pattern: str
    row: int  # layout cell
    col: int
    dx: int = 0  # jitter in pixels
    dy: int = 0

    def region(self, grid: int) -> str:
        """Region name from the cell's position on a 3×3 partition of the canvas."""
        third = lambda cell: min(2, (3 * (2 * cell + 1)) // (2 * grid))
        return REGIONS[3 * third(self.row) + third(self.col)]


@dataclass(frozen=True)
class Scene:
    objects: tuple[SceneObject, ...]
    background: str
    background_style: str
    grid: int
    seed: tuple[int, ...] = field(default=(0,), compare=False)


def random_scene(rng: np.random.Generator, grid: int, min_objects: int, max_objects: int) -> Scene:
    n = int(rng.integers(min_objects, max_objects + 1))
    cells = rng.choice(grid * grid, size=n, replace=False)
    objects = []
    for cell in cells:
        objects.append(
            SceneObject(
                shape=SHAPES[rng.integers(len(SHAPES))],
                colour=list(COLOURS)[rng.integers(len(COLOURS))],
                size=SIZES[rng.integers(len(SIZES))],
                pattern=PATTERNS[rng.integers(len(PATTERNS))],
                row=int(cell // grid),
                col=int(cell % grid),
                dx=int(rng.integers(-2, 3)),
                dy=int(rng.integers(-2, 3)),
            )
        )
    return Scene(
        objects=tuple(objects),
        background=list(BACKGROUNDS)[rng.integers(len(BACKGROUNDS))],
        background_style=BACKGROUND_STYLES[rng.integers(len(BACKGROUND_STYLES))],
        grid=grid,
    )


def twin_scene(scene: Scene, rng: np.random.Generator) -> tuple[Scene, str]:
    """A hard negative: one attribute of one object changed, or two objects swap colours or positions."""
    objects = list(scene.objects)
    kind = TWIN_KINDS[rng.integers(len(TWIN_KINDS))]
    i, j = (int(x) for x in rng.choice(len(objects), size=2, replace=False))
    if kind == "swap_colours" and objects[i].colour != objects[j].colour:
        objects[i], objects[j] = (replace(objects[i], colour=objects[j].colour),
                                  replace(objects[j], colour=objects[i].colour))
    elif kind == "swap_positions":
        a, b = objects[i], objects[j]
        objects[i] = replace(a, row=b.row, col=b.col, dx=b.dx, dy=b.dy)
        objects[j] = replace(b, row=a.row, col=a.col, dx=a.dx, dy=a.dy)
    else:
        kind = "attribute"
        attribute = ATTRIBUTES[rng.integers(len(ATTRIBUTES))]
        choices = {"shape": SHAPES, "colour": tuple(COLOURS), "size": SIZES, "pattern": PATTERNS}[attribute]
        current = getattr(objects[i], attribute)
        new = [c for c in choices if c != current][rng.integers(len(choices) - 1)]
        objects[i] = replace(objects[i], **{attribute: new})
    return replace(scene, objects=tuple(objects)), kind


def twin_change(scene: Scene, twin: Scene, kind: str) -> str:
    """What tells a scene from its twin (`twin_scene`'s kind): the attribute changed (shape, colour, size,
    pattern), or the kind itself for a swap. The kind alone does not say which attribute, so it is read off
    the one object that differs."""
    if kind != "attribute":
        return kind
    [(a, b)] = [(a, b) for a, b in zip(scene.objects, twin.objects, strict=True) if a != b]
    (attribute,) = [name for name in ATTRIBUTES if getattr(a, name) != getattr(b, name)]
    return attribute


# ---------------------------------------------------------------------------------------------- rendering


def _shape_mask(shape: str, size_px: int, canvas: int, cx: int, cy: int) -> np.ndarray:
    """Filled silhouette of a shape centred at (cx, cy): bool (canvas, canvas)."""
    img = Image.new("L", (canvas, canvas), 0)
    draw = ImageDraw.Draw(img)
    h = size_px / 2
    x0, y0, x1, y1 = cx - h, cy - h, cx + h - 1, cy + h - 1
    if shape == "circle":
        draw.ellipse((x0, y0, x1, y1), fill=1)
    elif shape == "square":
        draw.rectangle((x0 + 1, y0 + 1, x1 - 1, y1 - 1), fill=1)
    elif shape == "triangle":
        draw.polygon([(cx, y0), (x1, y1), (x0, y1)], fill=1)
    elif shape == "diamond":
        draw.polygon([(cx, y0), (x1, cy), (cx, y1), (x0, cy)], fill=1)
    elif shape == "cross":
        t = max(1, size_px // 6)
        draw.rectangle((cx - t, y0, cx + t - 1, y1), fill=1)
        draw.rectangle((x0, cy - t, x1, cy + t - 1), fill=1)
    elif shape == "ring":
        draw.ellipse((x0, y0, x1, y1), fill=1)
        inset = max(1, size_px // 4)
        if x1 - inset > x0 + inset:  # too small a ring stays a disc
            draw.ellipse((x0 + inset, y0 + inset, x1 - inset, y1 - inset), fill=0)
    else:
        raise ValueError(f"unknown shape {shape!r}")
    return np.asarray(img, dtype=bool)


def _erode(mask: np.ndarray) -> np.ndarray:
    inner = mask.copy()
    inner[1:] &= mask[:-1]
    inner[:-1] &= mask[1:]
    inner[:, 1:] &= mask[:, :-1]
    inner[:, :-1] &= mask[:, 1:]
    return inner


@dataclass
class Rendered:
    image: np.ndarray  # (H, W, 3) uint8
    classes: np.ndarray  # (H, W) uint8: 0 background, 1 + SHAPES index
    instances: np.ndarray  # (H, W) uint8: 0 background, 1 + object index (later objects occlude earlier)


def render(scene: Scene, image_size: int, rng: np.random.Generator) -> Rendered:
    cell = image_size / scene.grid
    base = np.array(BACKGROUNDS[scene.background], dtype=np.float32)
    ramp = np.linspace(-0.25, 0.25, image_size, dtype=np.float32)[:, None, None]
    image = np.broadcast_to(base, (image_size, image_size, 3)).copy()
    if scene.background_style == "gradient":
        image *= 1 + ramp
    elif scene.background_style == "speckled":
        image *= 1 + 0.25 * rng.standard_normal((image_size, image_size, 1)).astype(np.float32)
    classes = np.zeros((image_size, image_size), np.uint8)
    instances = np.zeros((image_size, image_size), np.uint8)
    stripes = (np.arange(image_size) % 3 == 0)[:, None]
    for index, obj in enumerate(scene.objects):
        size_px = round(cell * (0.5 if obj.size == "small" else 0.85))
        cx = round((obj.col + 0.5) * cell) + obj.dx
        cy = round((obj.row + 0.5) * cell) + obj.dy
        mask = _shape_mask(obj.shape, size_px, image_size, cx, cy)
        paint = mask & ~_erode(mask) if obj.pattern == "outlined" else mask
        colour = np.array(COLOURS[obj.colour], dtype=np.float32)
        image[paint] = colour
        if obj.pattern == "striped":
            image[mask & stripes] = colour * 0.45 + 40
        classes[paint] = 1 + SHAPES.index(obj.shape)
        instances[paint] = 1 + index
    return Rendered(np.clip(image, 0, 255).astype(np.uint8), classes, instances)


def render_single_object(rng: np.random.Generator, image_size: int) -> tuple[np.ndarray, int]:
    """A classification image: one large object of a random shape centred on a random background."""
    obj = SceneObject(
        shape=SHAPES[rng.integers(len(SHAPES))],
        colour=list(COLOURS)[rng.integers(len(COLOURS))],
        size="large",
        pattern=PATTERNS[rng.integers(len(PATTERNS))],
        row=0,
        col=0,
        dx=int(rng.integers(-2, 3)),
        dy=int(rng.integers(-2, 3)),
    )
    scene = Scene((obj,), list(BACKGROUNDS)[rng.integers(len(BACKGROUNDS))], "plain", grid=1)
    return render(scene, image_size, rng).image, SHAPES.index(obj.shape)
