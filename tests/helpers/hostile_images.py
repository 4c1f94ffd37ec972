"""Image bytes an upload or a benchmark may hold: a small real PNG and hostile variants of it."""

import io
import struct
import zlib

from PIL import Image


def png(size: tuple[int, int] = (64, 64)) -> bytes:
    """A real PNG of noise (it does not compress away, so half of it cuts into the pixel data)."""
    out = io.BytesIO()
    Image.effect_noise(size, 50).convert("RGB").save(out, format="PNG")
    return out.getvalue()


def declaring(raw: bytes, width: int, height: int) -> bytes:
    """`raw` (a PNG) with its IHDR claiming width x height, CRC recomputed: no such image is ever
    allocated."""
    ihdr = b"IHDR" + struct.pack(">II", width, height) + raw[24:29]  # length(4) IHDR(4) w h depth colour …(5)
    return raw[:12] + ihdr + struct.pack(">I", zlib.crc32(ihdr)) + raw[33:]


def hostile() -> dict[str, bytes]:
    """Kind -> bytes that must be refused with one line: no image, cut-off pixels, nothing, and a PNG bomb."""
    real = png()
    return {"not an image": b"hello", "truncated": real[: len(real) // 2], "empty": b"",
            "decompression bomb": declaring(real, 50_000, 50_000)}
