"""Duplicate removal, the plain part: exact (content sha256) and near (perceptual dHash) duplicate images.

The Beam transform that takes these decisions with its groupings before the models is
``transforms.dedup.DropDuplicates``; :func:`duplicates_of` takes the same ones in one process.

Of each group of duplicates the first in input order is kept (``--dedup-keep first``: a manifest's
row order, a tar's member order, a folder's file names; :func:`rank`), or the one with the most
pixels (``largest``; equal sizes: the first); every other one is marked filtered (stage ``dedup``,
reason ``duplicate``) with the key it duplicates and, when that one was dropped too, the key kept
in the detail, so it is counted and listed under ``filtered/``, never silently lost. Near duplicates are found with a
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
from typing import Any, Callable, Iterable, Iterator, Optional, Sequence

from PIL import Image

from core.images import HASH_BITS, dhash, thumbnail, thumbnails_close
from core.record import Field
from core.outcomes import mark_filtered
from core.spill import image_bytes, image_sha256

STAGE = "dedup"
KEEP_POLICIES = ("first", "largest")  # --dedup-keep
EXACT, NEAR = 0, 1  # how a duplicate matched its reference (an exact match is preferred over a near one)
# key -> (reference's rank, reference key, EXACT|NEAR, dHash distance): the decisions, min over every match
Ref = tuple[tuple[Any, ...], str, int, int]


def add_hashes(rec: dict[str, Any], near: bool = True) -> dict[str, Any]:
    """The content hash, and for the near check the dHash and colour thumbnail (one decode)."""
    image_sha256(rec)
    if near and Field.DHASH in rec and Field.THUMB in rec:
        return rec  # taken from the one full decode, when the image was checked (inputs.check)
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


def rank(rec: dict[str, Any], keep: str = "first") -> tuple[Any, ...]:
    """What decides which of a group of duplicates is kept: the smallest rank.

    ``first``: the record's place in the input (``Field.ORDER``, set by the readers), then its
    key; ``largest``: the most pixels first, then the same. A record without a place (built by
    hand) ranks by its key alone.
    """
    order = tuple(rec.get(Field.ORDER) or ())
    if keep == "largest":
        return (-int(rec.get("width") or 0) * int(rec.get("height") or 0), *order, rec["key"])
    return (*order, rec["key"])


def exact_pairs(group: tuple[str, Iterable[tuple[tuple[Any, ...], str]]]) -> Iterator[tuple[str, Ref]]:
    members = sorted(set(group[1]))
    first_rank, first_key = members[0]
    for _, k in members[1:]:
        yield k, (first_rank, first_key, EXACT, 0)


def near_pairs(group: tuple[Any, Iterable[tuple[tuple[Any, ...], str, int, bytes]]],
                threshold: int) -> Iterator[tuple[str, Ref]]:
    members = sorted(set(group[1]))
    for i, (ra, ka, ha, ta) in enumerate(members):
        for _, kb, hb, tb in members[i + 1:]:
            d = bin(ha ^ hb).count("1")
            if d <= threshold and ka != kb and thumbnails_close(ta, tb):
                yield kb, (ra, ka, NEAR, d)  # the later-ranked one duplicates the earlier one


def duplicate_detail(key: str, duplicates: dict[str, Ref]) -> str:
    """The filtered detail of ``key``: which key it duplicates, how, and the key kept when that one went too."""
    _, ref, how, dist = duplicates[key]
    text = "exact duplicate" if how == EXACT else f"near duplicate (dHash distance {dist})"
    text = f"{text} of {ref}"
    kept = ref
    for _ in range(len(duplicates)):  # references always rank earlier: the chain ends
        if kept not in duplicates:
            break
        kept = duplicates[kept][1]
    return text if kept == ref else f"{text}, itself a duplicate of {kept} (kept)"


def mark_duplicate(rec: dict[str, Any], duplicates: dict[str, Ref]) -> dict[str, Any]:
    rec.pop(Field.DHASH, None)
    rec.pop(Field.THUMB, None)
    if rec["key"] in duplicates:
        mark_filtered(rec, STAGE, "duplicate", duplicate_detail(rec["key"], duplicates))
    return rec


Row = tuple[str, str, Optional[int], Optional[bytes], tuple[Any, ...]]


def hash_row(rec: dict[str, Any], near: bool = True, keep: str = "first") -> Row:
    """``(key, sha256, dHash, thumbnail, rank)`` of a record: what :func:`duplicates_of` needs of it."""
    add_hashes(rec, near)
    return (rec["key"], rec[Field.SHA256], rec.get(Field.DHASH) if near else None,
            rec.get(Field.THUMB) if near else None, rank(rec, keep))


def duplicates_of(rows: Callable[[], Iterable[Sequence[Any]]], threshold: int) -> dict[str, Ref]:
    """key -> (reference's rank, the key it duplicates, EXACT|NEAR, dHash distance) over the rows
    (:func:`hash_row`) that ``rows()`` yields afresh on every call, in one process.

    The decisions ``transforms.dedup.DropDuplicates`` takes with its groupings, taken with dicts: the same pair
    functions on the same groups, then the smallest (reference rank and key, exact first, distance) per key. A local run
    in waves (``pipeline.waves``) takes them over the whole input before its first wave. Memory is
    a few small entries per row: one pass for the exact groups, then per band one pass that counts
    the band's buckets and one that collects the members of those holding two or more (only they
    can pair), so thumbnails are kept for candidates only.
    """
    found: dict[str, Ref] = {}

    def offer(pairs: Iterable[tuple[str, Ref]]) -> None:
        for key, ref in pairs:
            found[key] = min(found[key], ref) if key in found else ref

    first: dict[str, tuple[tuple[Any, ...], str]] = {}  # sha -> the (rank, key) kept of it
    for key, sha, _, _, r in rows():
        r = tuple(r)
        if sha not in first or (r, key) < first[sha]:
            first[sha] = (r, key)
    offer((key, (*first[sha], EXACT, 0)) for key, sha, _, _, _ in rows() if key != first[sha][1])
    del first
    if threshold < 0:
        return found
    for i in range(threshold + 1):
        sizes = Counter(v for _, _, dh, _, _ in rows() if dh is not None for v in [band_value(dh, threshold, i)]
                        if v is not None)
        shared = {v for v, n in sizes.items() if n > 1}
        del sizes
        groups: dict[int, list[tuple[tuple[Any, ...], str, int, bytes]]] = defaultdict(list)
        for key, _, dh, thumb, r in rows():
            v = band_value(dh, threshold, i) if dh is not None else None
            if v in shared:
                groups[v].append((tuple(r), key, dh, thumb))
        offer(p for group in groups.items() for p in near_pairs(group, threshold))
    return found
