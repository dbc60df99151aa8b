"""DropDuplicates: exact (content sha256) and near (perceptual dHash) duplicate images, before the models.

Of each group of duplicates the sample with the smallest key is kept; every other one is marked
filtered (stage ``dedup``, reason ``duplicate``) with the key it duplicates in the detail, so it is
counted and listed under ``filtered/``, never silently lost. Near duplicates are found with a
256-bit difference hash and LSH banding: with threshold ``t`` the hash is cut into ``t + 1``
bands, and two hashes within ``t`` bits share at least one band, so only images sharing a band
are compared. Constant bands (flat regions: all 0 or all 1 bits) are not used as buckets; they
would put every image with an empty sky or background in one bucket. A pair within ``t`` bits
is a near duplicate only if their 16x16 colour thumbnails agree too (:func:`thumbnails_close`):
dHash alone calls two nearly blank pictures with different small objects duplicates.
"""
from __future__ import annotations

import io
from collections import Counter, defaultdict
from typing import Any, Callable, Iterable, Iterator, Optional

import apache_beam as beam
import numpy as np
from PIL import Image

from core.record import Field
from transforms.common import mark_filtered
from transforms.spill import image_bytes, image_sha256

STAGE = "dedup"
HASH_SIDE = 16  # 16x16 gradient bits = 256-bit hash
HASH_BITS = HASH_SIDE * HASH_SIDE
THUMB_SIDE = 16  # colour thumbnail that confirms a near-duplicate pair
THUMB_MAX_DIFF = 32


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


def add_hashes(rec: dict[str, Any], near: bool = True) -> dict[str, Any]:
    """The content hash, and for the near check the dHash and colour thumbnail (one decode)."""
    image_sha256(rec)
    if near and Field.DHASH in rec and Field.THUMB in rec:
        return rec  # taken from the one full decode, when the image was checked (transforms.check)
    if near:
        with Image.open(io.BytesIO(image_bytes(rec))) as im:
            rec[Field.DHASH] = dhash(im)
            rec[Field.THUMB] = thumbnail(im)
    return rec


def band_value(h: int, threshold: int, i: int) -> Optional[int]:
    """Band ``i`` of hash ``h`` with ``threshold + 1`` bands; None when it is constant (or past the hash)."""
    width = -(-HASH_BITS // (threshold + 1))
    lo = i * width
    size = min(width, HASH_BITS - lo)
    if size <= 0:
        return None
    value = (h >> (HASH_BITS - lo - size)) & ((1 << size) - 1)
    return None if value in (0, (1 << size) - 1) else value


def bands(h: int, threshold: int) -> Iterator[tuple[int, int]]:
    """``(band index, band value)`` buckets of hash ``h`` for LSH with ``threshold + 1`` bands."""
    for i in range(threshold + 1):
        value = band_value(h, threshold, i)
        if value is not None:
            yield i, value


def _exact_pairs(group: tuple[str, Iterable[str]]) -> Iterator[tuple[str, tuple[str, int]]]:
    keys = sorted(set(group[1]))
    for k in keys[1:]:
        yield k, (keys[0], 0)


def _near_pairs(group: tuple[Any, Iterable[tuple[str, int, bytes]]],
                threshold: int) -> Iterator[tuple[str, tuple[str, int]]]:
    members = sorted(set(group[1]))
    for i, (ka, ha, ta) in enumerate(members):
        for kb, hb, tb in members[i + 1:]:
            d = bin(ha ^ hb).count("1")
            if d <= threshold and ka != kb and thumbnails_close(ta, tb):
                yield kb, (ka, d)  # the larger key duplicates the smaller one


def _mark(rec: dict[str, Any], duplicates: dict[str, tuple[str, int]]) -> dict[str, Any]:
    hit = duplicates.get(rec["key"])
    rec.pop(Field.DHASH, None)
    rec.pop(Field.THUMB, None)
    if hit is not None:
        ref, dist = hit
        kind = "exact duplicate" if dist == 0 else f"near duplicate (dHash distance {dist})"
        mark_filtered(rec, STAGE, "duplicate", f"{kind} of {ref}")
    return rec


def hash_row(rec: dict[str, Any], near: bool = True) -> tuple[str, str, Optional[int], Optional[bytes]]:
    """``(key, sha256, dHash, thumbnail)`` of a record: what :func:`duplicates_of` needs of it."""
    add_hashes(rec, near)
    return rec["key"], rec[Field.SHA256], rec.get(Field.DHASH) if near else None, rec.get(Field.THUMB) if near else None


Row = tuple[str, str, Optional[int], Optional[bytes]]


def duplicates_of(rows: Callable[[], Iterable[Row]], threshold: int) -> dict[str, tuple[str, int]]:
    """key -> (the key it duplicates, dHash distance) over the rows (:func:`hash_row`) that ``rows()``
    yields afresh on every call, in one process.

    The decisions :class:`DropDuplicates` takes with its groupings, taken with dicts: the same pair
    functions on the same groups, then the smallest (reference key, distance) per key. A local run
    in waves (``pipeline.waves``) takes them over the whole input before its first wave. Memory is
    a few small entries per row: one pass for the exact groups, then per band one pass that counts
    the band's buckets and one that collects the members of those holding two or more (only they
    can pair), so thumbnails are kept for candidates only.
    """
    found: dict[str, tuple[str, int]] = {}

    def offer(pairs: Iterable[tuple[str, tuple[str, int]]]) -> None:
        for key, ref in pairs:
            found[key] = min(found[key], ref) if key in found else ref

    smallest: dict[str, str] = {}  # sha -> the smallest key with it
    for key, sha, _, _ in rows():
        if sha not in smallest or key < smallest[sha]:
            smallest[sha] = key
    offer((key, (smallest[sha], 0)) for key, sha, _, _ in rows() if key != smallest[sha])
    del smallest
    if threshold < 0:
        return found
    for i in range(threshold + 1):
        sizes = Counter(v for _, _, dh, _ in rows() if dh is not None for v in [band_value(dh, threshold, i)]
                        if v is not None)
        shared = {v for v, n in sizes.items() if n > 1}
        del sizes
        groups: dict[int, list[tuple[str, int, bytes]]] = defaultdict(list)
        for key, _, dh, thumb in rows():
            v = band_value(dh, threshold, i) if dh is not None else None
            if v in shared:
                groups[v].append((key, dh, thumb))
        offer(p for group in groups.items() for p in _near_pairs(group, threshold))
    return found


class DropDuplicates(beam.PTransform):
    """Mark exact and near duplicates filtered; ``near_threshold < 0`` keeps only the exact check.

    ``known`` (key -> (reference key, distance), from :func:`duplicates_of`) marks those decisions
    instead of taking them here: a wave of a local run sees only part of the input.
    """

    def __init__(self, near_threshold: int = 6, known: Optional[dict[str, tuple[str, int]]] = None):
        super().__init__()
        self.near_threshold = near_threshold
        self.known = known

    def expand(self, records: beam.PCollection) -> beam.PCollection:
        t = self.near_threshold
        if self.known is not None:
            return (records | "Hash" >> beam.Map(add_hashes, near=False)
                    | "MarkDuplicates" >> beam.Map(_mark, duplicates=self.known))
        hashed = records | "Hash" >> beam.Map(add_hashes, near=t >= 0)
        exact = (hashed
                 | "BySha" >> beam.Map(lambda r: (r[Field.SHA256], r["key"]))
                 | "GroupSha" >> beam.GroupByKey()
                 | "ExactPairs" >> beam.FlatMap(_exact_pairs))
        found = [exact]
        if t >= 0:
            found.append(hashed
                         | "Bands" >> beam.FlatMap(lambda r: [(b, (r["key"], r[Field.DHASH], r[Field.THUMB]))
                                                             for b in bands(r[Field.DHASH], t)])
                         | "GroupBand" >> beam.GroupByKey()
                         | "NearPairs" >> beam.FlatMap(_near_pairs, threshold=t))
        duplicates = (found | "AllPairs" >> beam.Flatten()
                      | "Closest" >> beam.CombinePerKey(min))  # the smallest reference key, then the smallest distance
        return hashed | "MarkDuplicates" >> beam.Map(_mark, duplicates=beam.pvalue.AsDict(duplicates))
