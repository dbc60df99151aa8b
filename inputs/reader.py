"""Reading one read unit into records: the reader of its kind (a folder's files, a manifest, a tar), text made
valid, each record's place in the input, the unit's count of items, and the image check in a thread pool.

Every input item comes out as exactly one record with a stable key: read, or marked dead
(``unreadable``, ``file_too_large``, ``not_a_regular_file``, ``unsupported_scheme`` ...) or
filtered (``unsupported_format``, ``skipped_file``) with a reason; nothing raises out of a unit.
"""
from __future__ import annotations

import hashlib
import itertools
import json
import os
import posixpath
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, Iterable, Iterator, Optional

import fsspec

from core.files import atomic_write
from core.outcomes import mark_dead
from core.record import MAX_IMAGE_BYTES, Field, make_key, valid_text
from inputs.folders import _records_from_files, _records_skipped
from inputs.manifests import _records_from_manifest
from inputs.names import _relative_name
from inputs.records import STAGE, new_record, valid_record
from inputs.tars import _records_from_tar
from inputs.units import ReadUnit

# images of one read unit checked (fully decoded, hashed) at the same time: Pillow's decoders and
# hashlib release the GIL, so one worker process decodes on more than one core
CHECK_THREADS = max(1, min(4, os.cpu_count() or 1))


READERS: dict[str, Callable[..., Iterator[dict[str, Any]]]] = {
    "files": _records_from_files, "manifest": _records_from_manifest, "tar": _records_from_tar,
    "skipped": _records_skipped}


def read_unit(unit: ReadUnit, max_image_bytes: int = MAX_IMAGE_BYTES,
              want: Optional[Callable[[str], bool]] = None) -> Iterator[dict[str, Any]]:
    """Every record of ``unit``, with valid text. A reader that fails (a bug) ends the unit with one
    dead record (``unreadable_input``) instead of failing the bundle. Records whose key ``want``
    refuses come out too, but their images may not have been read (see :func:`read_and_count`).

    Returns (as the generator's value) the items the reader counted apart from its records (a
    tar's members, :func:`inputs.tars._records_from_tar`), or None when the records are the count."""
    records = READERS[unit.kind](unit, max_image_bytes, want)
    for n in itertools.count():
        try:
            rec = next(records)
        except StopIteration as stop:
            return stop.value
        except Exception as e:  # noqa: BLE001 - never fail the bundle: the rest of this unit is dead-lettered
            where = unit.uris[0] if unit.uris else unit.root
            rec = new_record(make_key(posixpath.basename(where) + "_read_error", where), where)
            yield valid_record(mark_dead(rec, STAGE, "unreadable_input", f"{type(e).__name__}: {e}"))
            return None
        rec[Field.ORDER] = input_order(unit, n)
        yield valid_record(rec)


def input_order(unit: ReadUnit, n: int) -> tuple[int, int, str]:
    """Where the ``n``-th record of ``unit`` stands in the input (``Field.ORDER``), comparable across units.

    A manifest's rows and a tar's samples: the unit's place in the listing, then the row (of the
    whole manifest) or sample. A folder's or glob's files: by path, the extension set aside, so
    ``photo.jpg`` comes before ``photo (copy).jpg``, ``photo-2.jpg`` and ``photo.png`` (sorted
    paths put ``photo (copy).jpg`` first: a space sorts before the dot).
    """
    if unit.kind == "files" and n < len(unit.uris):
        stem, ext = posixpath.splitext(_relative_name(unit.uris[n], unit.root))
        return 0, 0, valid_text(f"{stem}\0{ext}", escape=True)
    return unit.ordinal, unit.first_row + n, ""


def unit_id(unit: ReadUnit) -> str:
    """A stable name for a read unit (its kind and URIs)."""
    h = hashlib.sha1(unit.kind.encode("utf-8"))
    if unit.span:
        h.update(repr(unit.span).encode())
    for uri in unit.uris:
        h.update(b"\0" + uri.encode("utf-8", "surrogatepass"))
    return h.hexdigest()[:20]


def read_and_count(unit: ReadUnit, max_image_bytes: int = MAX_IMAGE_BYTES,
                   counts_root: Optional[str] = None,
                   want: Optional[Callable[[str], bool]] = None) -> Iterator[dict[str, Any]]:
    """:func:`read_unit`, then ``COUNTS_ROOT/<unit id>.json`` saying how many input items the unit held.

    That count reaches the run's summary by its own path (not through the records), so a sample
    lost anywhere between here and the shard writer shows up as ``reconciled: false``. A folder
    unit counts its listed files (each must come out as one record); a tar counts the items its
    members make, tallied apart from the grouping of members into records (a member the grouping
    loses shows as ``reconciled: false``); a manifest counts the items its reader found.

    With ``want`` (a local run in waves, ``pipeline.waves``) only the records whose key it keeps
    come out, and the readers skip the others' image reads where they can; the count is still
    the whole unit's, so every wave writes the same count file.
    """
    n = 0
    records = read_unit(unit, max_image_bytes, want)
    while True:
        try:
            rec = next(records)
        except StopIteration as stop:
            held = stop.value
            break
        n += 1
        if want is None or want(rec["key"]):
            yield rec
    if counts_root:
        listed = len(unit.uris) if unit.kind in ("files", "skipped") else n if held is None else held
        fs, root = fsspec.core.url_to_fs(counts_root)
        fs.makedirs(root, exist_ok=True)
        body = {"unit": unit_id(unit), "kind": unit.kind, "uris": len(unit.uris), "items": listed}
        atomic_write(fs, posixpath.join(root, unit_id(unit) + ".json"), json.dumps(body, sort_keys=True).encode())


def checked(records: Iterable[dict[str, Any]], check: Callable[[dict[str, Any]], dict[str, Any]],
            threads: int = CHECK_THREADS) -> Iterator[dict[str, Any]]:
    """``check(rec)`` of every record, in their order, ``threads`` at a time with a bounded look-ahead."""
    if threads <= 1:
        yield from map(check, records)
        return
    with ThreadPoolExecutor(threads) as pool:
        window: deque = deque()
        for rec in records:
            window.append(pool.submit(check, rec))
            if len(window) >= threads * 2:
                yield window.popleft().result()
        while window:
            yield window.popleft().result()


def read_and_check(unit: ReadUnit, check: Callable[[dict[str, Any]], dict[str, Any]],
                   max_image_bytes: int = MAX_IMAGE_BYTES, counts_root: Optional[str] = None,
                   threads: int = CHECK_THREADS,
                   want: Optional[Callable[[str], bool]] = None) -> Iterator[dict[str, Any]]:
    """:func:`read_and_count`, each record then passed through ``check`` (the image check) in a thread pool."""
    yield from checked(read_and_count(unit, max_image_bytes, counts_root, want), check, threads)
