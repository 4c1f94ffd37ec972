"""Benchmark files as untrusted input: paths an annotation names must stay inside the benchmark's root, and
image files (and untrusted image bytes such as an upload) are checked cheaply (present, not empty, a readable
header of a sane size) before any pixel is decoded."""

from __future__ import annotations

import io
import os
import warnings
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import BinaryIO

from PIL import Image, UnidentifiedImageError

from flair_core.data.errors import DataError


def inside(root: Path, relative: str, where: str) -> Path:
    """`root / relative`, refused when `relative` is absolute or climbs out of `root` with `..`.

    Judged on the normalised path, not the resolved one: a dataset may symlink its image folder elsewhere."""
    path = Path(os.path.normpath(root / relative))
    if os.path.isabs(relative) or not path.is_relative_to(os.path.normpath(root)):
        raise DataError(f"{where}: path {relative!r} leaves the benchmark root {root}")
    return path


# untrusted bytes (an upload): 40 megapixels is ~120 MB as RGB, far above any test image
MAX_PIXELS = 40_000_000


def image_problem(path: Path) -> str | None:
    """Why `path` cannot be an image, from its size and header only (no pixel is decoded); None if it can."""
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        return "missing"
    except OSError as err:
        return f"unreadable ({err.strerror})"
    if size == 0:
        return "empty file"
    return _header_problem(path)


def _header_problem(source: Path | BinaryIO, max_pixels: int | None = None) -> str | None:
    """Why `source` (a path or an open binary file) cannot be an image, from its header alone; None if it
    can."""
    try:
        with warnings.catch_warnings():
            # PIL only warns between its two limits; `max_pixels` (or the decode) decides about those sizes
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(source) as image:
                width, height = image.size
    except UnidentifiedImageError:
        return "not an image"
    except Image.DecompressionBombError:
        return "too many pixels (decompression bomb)"
    except (OSError, ValueError) as err:  # ValueError: e.g. a PNG text chunk that inflates too far
        return f"unreadable header ({err})"
    if width * height == 0:
        return "zero-sized image"
    if max_pixels is not None and width * height > max_pixels:
        return f"too many pixels ({width} x {height})"
    return None


def image_from_bytes(raw: bytes, what: str, max_pixels: int = MAX_PIXELS) -> Image.Image:
    """Untrusted bytes (an upload) as an RGB image: not empty, a readable header and at most `max_pixels` by
    that header before any pixel is decoded, then pixels that decode; otherwise a one-line DataError naming
    `what`."""
    problem = "empty file" if not raw else _header_problem(io.BytesIO(raw), max_pixels)
    if problem is None:
        try:
            with Image.open(io.BytesIO(raw)) as image:
                return image.convert("RGB")
        except (OSError, ValueError) as err:  # truncated or corrupt pixel data
            problem = f"does not decode ({' '.join(str(err).split())})"
    raise DataError(f"{what}: {problem}")


def check_images(name: str, paths: Iterable[Path], what: str = "images") -> None:
    """One-line DataError with the count of unusable files and the first one, before any compute."""
    paths = list(paths)
    bad = [(path, problem) for path in paths if (problem := image_problem(path)) is not None]
    if bad:
        kinds = sorted({problem.split(" (")[0] for _, problem in bad})
        raise DataError(f"{name}: {len(bad)} of {len(paths)} {what} unusable ({', '.join(kinds)}), first: "
                        f"{bad[0][0]} ({bad[0][1]})")


def decoded(name: str, paths: Iterable[Path]) -> Iterator[Image.Image]:
    """Each image as RGB; a file whose header passed the pre-check but whose pixels do not decode (e.g. a
    truncated PNG) is a one-line DataError naming it."""
    for path in paths:
        try:
            with Image.open(path) as image:
                rgb = image.convert("RGB")
        except OSError as err:
            raise DataError(f"{name}: image {path} does not decode ({err})") from None
        yield rgb
