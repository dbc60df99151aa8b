"""Image helpers every layer shares: opening a record's image, its difference hash and colour thumbnail."""
from __future__ import annotations

import io
from typing import Any

import numpy as np
from PIL import Image

from core.spill import image_bytes

HASH_SIDE = 16  # 16x16 gradient bits = 256-bit hash
HASH_BITS = HASH_SIDE * HASH_SIDE
THUMB_SIDE = 16  # colour thumbnail that confirms a near-duplicate pair
THUMB_MAX_DIFF = 32


def open_image(record: dict[str, Any]) -> Image.Image:
    """The record's image, opened lazily (header only until pixels are touched)."""
    return Image.open(io.BytesIO(image_bytes(record)))


def dhash(image: Image.Image, side: int = HASH_SIDE) -> int:
    """Difference hash: one bit per horizontally adjacent pixel pair of a (side+1) x side thumbnail."""
    gray = image.convert("L").resize((side + 1, side), Image.Resampling.LANCZOS)
    px = gray.tobytes()
    bits = 0
    for r in range(side):
        row = px[r * (side + 1):(r + 1) * (side + 1)]
        for c in range(side):
            bits = (bits << 1) | (row[c] > row[c + 1])
    return bits


def thumbnail(image: Image.Image, side: int = THUMB_SIDE) -> bytes:
    """A ``side`` x ``side`` RGB thumbnail (box filter): the colour check of a near-duplicate pair."""
    return image.convert("RGB").resize((side, side), Image.Resampling.BOX).tobytes()


def thumbnails_close(a: bytes, b: bytes, limit: int = THUMB_MAX_DIFF) -> bool:
    """Whether no value of two thumbnails differs by more than ``limit`` (0-255, any channel).

    dHash is grey and gradient-only: two nearly blank pictures with a different small object
    (or background colour) can be a few bits apart. Re-encoded (JPEG q40-90) and resized (to a
    quarter) copies stayed within 21 on the bundled photos and scenes; such distinct pairs
    differed by 43 or more (docs/data_quality.md). The maximum, not a mean or percentile, so a
    small object still counts.
    """
    diff = np.abs(np.frombuffer(a, np.uint8).astype(np.int16) - np.frombuffer(b, np.uint8).astype(np.int16))
    return bool(diff.max() <= limit)
