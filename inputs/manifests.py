"""Reading a manifest (``.jsonl``, ``.json``, ``.parquet``, or a part of one): one record per row, its image read
(fetched) ``READ_THREADS`` at a time."""
from __future__ import annotations

import hashlib
import io
import json
import posixpath
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, Iterable, Iterator, Optional

from core.files import protocol_of
from core.outcomes import bump, mark_dead
from core.record import MAX_IMAGE_BYTES, Field, SampleError, make_key
from inputs.lines import MAX_MANIFEST_LINE_BYTES, UTF8_BOM, UTF16_BOMS, _decode, _lines, _Prefixed, _Span
from inputs.names import _is_parquet, _relative_stem
from inputs.opening import _NON_FILE_SCHEMES, open_input
from inputs.records import STAGE, _not_object, _read_into, new_record
from inputs.units import ReadUnit

URI_COLUMNS = ("url", "image", "image_path", "img_path", "f_path", "path", "uri")
CAPTION_COLUMNS = ("caption", "short_caption", "alt", "alt_text", "text", "TEXT")
READ_THREADS = 16  # images of one manifest read (fetched) at the same time


def _manifest_rows(uri: str, span: tuple[int, ...] = ()) -> Iterator[tuple[str, Any]]:
    """``(where, row)`` per manifest row; ``row`` is the parsed value (any JSON type) or an Exception.

    ``span``: only that part of the manifest (see :func:`inputs.units.split_unit`).
    """
    if _is_parquet(uri):
        import pyarrow.parquet as pq

        with open_input(uri) as f:
            source = f if f.seekable() else io.BytesIO(f.read())
            pf = pq.ParquetFile(source)
            groups = range(*span) if span else None
            i = 0
            for batch in pf.iter_batches(batch_size=1024, row_groups=groups):
                for row in batch.to_pylist():
                    yield f"row {i}", row
                    i += 1
        return
    if span:  # a part of a UTF-8 jsonl file, from a line start
        with open_input(uri) as f:
            f.seek(span[0])
            for lineno, (line, too_long) in enumerate(_lines(_Span(f, span[1] - span[0]), MAX_MANIFEST_LINE_BYTES), 1):
                if span[0] == 0 and lineno == 1 and line.startswith(UTF8_BOM):
                    line = line[len(UTF8_BOM):]
                yield from _jsonl_row(f"byte {span[0]} + line {lineno}", line, too_long)
        return
    with open_input(uri) as f:
        head = f.read(2)
        if head in UTF16_BOMS:  # a manifest saved as UTF-16 (PowerShell's default): read whole, as UTF-8
            f = io.BytesIO((head + f.read()).decode("utf-16", "replace").encode("utf-8"))
        else:
            f = _Prefixed(head, f)
        if uri.lower().split("?")[0].endswith(".json"):
            data = f.read()
            if data.startswith(UTF8_BOM):
                data = data[len(UTF8_BOM):]
            text, _ = _decode(data)
            try:
                whole = json.loads(text)
            except (ValueError, RecursionError) as e:
                if text.lstrip().startswith("["):
                    yield "the whole file", SampleError("bad_manifest", f"not JSON: {e}")
                    return
                whole = None  # json lines in a .json file
            else:
                rows = whole if isinstance(whole, list) else [whole]
                for i, row in enumerate(rows):
                    yield f"item {i}", row
                return
            f = io.BytesIO(data)
        first = True
        for lineno, (line, too_long) in enumerate(_lines(f, MAX_MANIFEST_LINE_BYTES), 1):
            if first and line.startswith(UTF8_BOM):
                line = line[len(UTF8_BOM):]
            first = False
            yield from _jsonl_row(f"line {lineno}", line, too_long)


def _jsonl_row(where: str, line: bytes, too_long: bool) -> Iterator[tuple[str, Any]]:
    """The row of one jsonl line (nothing for a blank line)."""
    if too_long:
        yield where, ValueError(f"longer than {MAX_MANIFEST_LINE_BYTES} bytes")
        return
    text, _ = _decode(line)
    if not text.strip():
        return
    try:
        yield where, json.loads(text)
    except (ValueError, RecursionError) as e:
        yield where, ValueError(f"not JSON: {e}")


def _first(row: dict[str, Any], names: Iterable[str]) -> Optional[str]:
    """The first of ``names`` whose value is text or a number (a list or object is not a path or caption)."""
    for n in names:
        v = row.get(n)
        if v in (None, "") or isinstance(v, (list, tuple, dict, bool)):
            continue
        if isinstance(v, (bytes, bytearray)):
            return _decode(bytes(v))[0]
        return str(v)
    return None


def _inline_image(row: dict[str, Any]) -> Optional[dict[str, Any]]:
    """A Hugging Face ``datasets`` image cell (``{"bytes": ..., "path": ...}``) in an image column, if any."""
    for n in URI_COLUMNS:
        v = row.get(n)
        if isinstance(v, dict) and (isinstance(v.get("bytes"), (bytes, bytearray)) and v["bytes"]
                                    or isinstance(v.get("path"), str) and v["path"]):
            return v
    return None


def _records_from_manifest(unit: ReadUnit, max_bytes: int = MAX_IMAGE_BYTES,
                           want: Optional[Callable[[str], bool]] = None) -> Iterator[dict[str, Any]]:
    """One record per row; images are read (fetched) ``READ_THREADS`` at a time, in row order
    (only those of the records ``want`` keeps)."""
    manifest = unit.uris[0]
    base = manifest.rsplit("/", 1)[0] if "/" in manifest else "."
    own = protocol_of(manifest)
    allowed = (own,) if own else ()
    used: set[str] = set()
    pending: list[tuple[dict[str, Any], Optional[str]]] = []

    def drain() -> Iterator[dict[str, Any]]:
        todo = [(rec, uri) for rec, uri in pending if uri is not None and (want is None or want(rec["key"]))]
        if todo:
            with ThreadPoolExecutor(min(READ_THREADS, len(todo))) as pool:
                list(pool.map(lambda ru: _read_into(ru[0], ru[1], max_bytes, allowed), todo))
        yield from (rec for rec, _ in pending)
        pending.clear()

    try:
        for i, (where, row) in enumerate(_manifest_rows(manifest, unit.span), unit.first_row):
            pending.append(_row_record(i, where, row, manifest, base, used, max_bytes))
            if len(pending) >= READ_THREADS * 4:
                yield from drain()
    except Exception as e:  # noqa: BLE001 - the rows before stay; the manifest is dead-lettered with why
        yield from drain()
        rec = new_record(make_key(posixpath.basename(manifest) + "_manifest_error", manifest), manifest)
        reason = e.reason if isinstance(e, SampleError) else "unreadable_manifest"
        yield mark_dead(rec, STAGE, reason, e.detail if isinstance(e, SampleError) else f"{type(e).__name__}: {e}")
        return
    yield from drain()


def _row_record(i: int, where: str, row: Any, manifest: str, base: str, used: set[str],
                max_bytes: int = MAX_IMAGE_BYTES) -> tuple[dict[str, Any], Optional[str]]:
    """The record of manifest row ``i`` and the URI to read its image from (None: the record is marked)."""
    def bad(reason: str, detail: str) -> tuple[dict[str, Any], None]:
        rec = new_record(make_key(f"row{i}", f"{manifest}#{i}"), f"{manifest}#{i}")
        return mark_dead(rec, STAGE, reason, f"{where}: {detail}"), None

    if isinstance(row, SampleError):
        return bad(row.reason, row.detail)
    if isinstance(row, Exception):
        return bad("bad_manifest_row", str(row))
    if not isinstance(row, dict):
        return bad("bad_manifest_row", _not_object(row))
    inline = _inline_image(row)
    image_uri = _first(row, URI_COLUMNS)
    if inline is not None:  # bytes in the row (HF datasets parquet); its path, if any, only names it
        path = inline.get("path")
        image_uri = path if isinstance(path, str) and path else f"{manifest}#{i}"
    if image_uri is None:
        return bad("bad_manifest_row", f"no image column (one of {', '.join(URI_COLUMNS)})")
    if "://" not in image_uri and not image_uri.startswith("/") and not image_uri.lower().startswith(_NON_FILE_SCHEMES):
        image_uri = f"{base}/{image_uri}"
    key_src = _first(row, ("key", "__key__", "id"))
    renamed = False
    if key_src:
        key = make_key(key_src)  # the key the input chose; a repeat in this manifest gets a hash of its row
        if key in used:
            key = f"{key}_{hashlib.sha1(f'{manifest}#{i}'.encode('utf-8', 'surrogatepass')).hexdigest()[:10]}"
            renamed = True
    else:
        # Derived from the file name; when an earlier row of this manifest has it (b.jpg, b.png; two
        # URLs ending in image.jpg), the name with its extension and a hash of the whole URI, then the row.
        key_src = _relative_stem(image_uri, base)
        key = make_key(key_src, image_uri)
        if key in used:
            key_src = image_uri.rsplit("/", 1)[-1]
            key = make_key(key_src, image_uri)
        if key in used:
            key = make_key(key_src, f"{image_uri}#{i}")
    used.add(key)
    rec = new_record(key, image_uri, _first(row, CAPTION_COLUMNS) or "", key_source=key_src)
    if renamed:
        bump(rec, "duplicate_input_key")
    long_caption = row.get("long_caption")
    if isinstance(long_caption, str) and long_caption:
        rec[Field.INPUT_CAPTION] = long_caption
    if inline is not None and isinstance(inline.get("bytes"), (bytes, bytearray)) and inline["bytes"]:
        if len(inline["bytes"]) > max_bytes:
            mark_dead(rec, STAGE, "file_too_large", f"{len(inline['bytes'])} bytes > --max-image-bytes {max_bytes}")
        else:
            rec[Field.IMAGE_BYTES] = bytes(inline["bytes"])
        return rec, None
    return rec, image_uri
