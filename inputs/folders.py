"""Reading a folder's (or a glob's) files: images read whole, a file without an image extension sniffed, an image's
sidecars read with it, and each file a folder input does not read filtered with why."""
from __future__ import annotations

import io
import json
import os
import posixpath
from typing import Any, Callable, Iterable, Iterator, Optional

from core.files import protocol_of
from core.outcomes import mark_dead, mark_filtered
from core.record import MAX_IMAGE_BYTES, Field, SampleError, make_key
from inputs.names import _relative_name, has_image_ext
from inputs.opening import open_input, read_limited
from inputs.records import (STAGE, _keep_source, _not_object, _read_error, _read_into, is_finehard_record, new_record,
                            shard_record_problem)
from inputs.units import ReadUnit, detect_kind

SNIFF_BYTES = 64 * 1024  # enough of a file without an image extension to tell whether it is an image


def _sniff_image(uri: str, limit: int, allowed: tuple[str, ...] = ()) -> Optional[bytes]:
    """The bytes of a file without an image extension when they are an image Pillow can open, else None."""
    from PIL import Image

    try:
        data = read_limited(uri, limit, allowed)
    except SampleError as e:
        if e.reason != "file_too_large":
            raise
        with open_input(uri) as f:  # too large to read whole: look at its head only
            head = f.read(SNIFF_BYTES)
        try:
            Image.open(io.BytesIO(head))
        except Exception:  # noqa: BLE001 - not an image: a large file of some other kind
            return None
        raise
    try:
        Image.open(io.BytesIO(data))
    except Image.UnidentifiedImageError:
        return None
    except Exception:  # noqa: BLE001 - identified but broken: check_image gives the reason
        pass
    return data


def _read_sidecars(rec: dict[str, Any], paths: Iterable[str], max_bytes: int, allowed: tuple[str, ...]) -> None:
    """Fill ``rec`` from its image's sidecars as ``_records_from_tar`` does from a sample's ``.txt`` and
    ``.json`` members: the ``.txt`` is the short caption, else the ``.json``'s ``caption``; its ``url``
    is ``source_url``; a ``.json`` of our own shards brings its record (captions, regions, provenance).
    A sidecar that cannot be read, or a ``.json`` that is not a JSON object, dead-letters the sample."""
    by_ext: dict[str, str] = {}
    for p in paths:  # in sorted order: of 0001.txt and 0001.TXT the first is read
        by_ext.setdefault(posixpath.splitext(p)[1].lower().lstrip("."), p)

    def read(path: str) -> bytes:
        try:
            return read_limited(path, max_bytes, allowed)
        except SampleError as e:
            raise SampleError(e.reason, f"sidecar {path}: {e.detail}") from None
        except OSError as e:
            raise SampleError("unreadable", f"sidecar {path}: {type(e).__name__}: {e}") from None

    txt = read(by_ext["txt"]).decode("utf-8-sig", "replace") if "txt" in by_ext else ""
    meta: Any = {}
    if "json" in by_ext:
        try:
            meta = json.loads(read(by_ext["json"]))
        except (ValueError, RecursionError) as e:
            mark_dead(rec, STAGE, "bad_member_json", f"{by_ext['json']}: not JSON: {e}")
            return
        if not isinstance(meta, dict):
            mark_dead(rec, STAGE, "bad_member_json", f"{by_ext['json']}: {_not_object(meta)}")
            return
    if is_finehard_record(meta):  # one of our own shards, unpacked: its record, under the file's key
        problem = shard_record_problem(meta)
        if problem:
            mark_dead(rec, STAGE, "bad_shard_record", f"{by_ext['json']}: {problem}")
            return
        rec["f_path"] = str(meta.get("f_path") or rec["f_path"])
        rec["short_caption"] = str(meta.get("short_caption") or "")
        rec[Field.INPUT_RECORD] = {f: meta[f] for f in ("caption", "bbox_info", "provenance") if f in meta}
        if meta.get("caption"):
            rec[Field.INPUT_CAPTION] = str(meta["caption"])
    else:
        caption = meta.get("caption")
        rec["short_caption"] = txt or (caption if isinstance(caption, str) else "")
    if meta.get("url"):
        rec["source_url"] = str(meta["url"])


def _records_from_files(unit: ReadUnit, max_bytes: int = MAX_IMAGE_BYTES,
                        want: Optional[Callable[[str], bool]] = None) -> Iterator[dict[str, Any]]:
    ext_keys = set(unit.ext_keys)
    own = protocol_of(unit.root)
    allowed = (own,) if own else ()  # the filesystem the input was listed on
    sidecars: dict[str, list[str]] = {}
    for s in unit.sidecars:
        sidecars.setdefault(posixpath.splitext(s)[0], []).append(s)
    for uri in unit.uris:
        name = _relative_name(uri, unit.root)
        stem = name if uri in ext_keys else os.path.splitext(name)[0]
        rec = new_record(make_key(stem, uri[len(unit.root):]), uri, key_source=stem)
        if want is not None and not want(rec["key"]):
            yield rec  # another wave's: counted, not read
            continue
        if sidecars and has_image_ext(uri) and posixpath.splitext(uri)[0] in sidecars:
            try:
                _read_sidecars(rec, sidecars[posixpath.splitext(uri)[0]], max_bytes, allowed)
            except Exception as e:  # noqa: BLE001 - one unreadable sidecar is that sample's reason
                _read_error(rec, e)
            if Field.DEAD in rec:
                yield rec
                continue
        if has_image_ext(uri):
            yield _read_into(rec, uri, max_bytes, allowed)
            continue
        try:
            data = _sniff_image(uri, max_bytes, allowed)
            if data is None:
                ext = os.path.splitext(name)[1].lower()
                mark_filtered(rec, STAGE, "unsupported_format",
                              f"{ext or 'no extension'}: not an image this pipeline decodes ({name})")
            else:
                rec[Field.IMAGE_BYTES] = data
                _keep_source(rec, uri)
        except Exception as e:  # noqa: BLE001
            _read_error(rec, e)
        yield rec


def _records_skipped(unit: ReadUnit, max_bytes: int = MAX_IMAGE_BYTES,
                     want: Optional[Callable[[str], bool]] = None) -> Iterator[dict[str, Any]]:
    """Files of a folder input that are not read (see :func:`inputs.units.list_units`), each as a filtered record."""
    for uri in unit.uris:
        name = _relative_name(uri, unit.root)
        rec = new_record(make_key(name, f"skipped:{name}"), uri, key_source=name)
        if detect_kind(uri) == "files":
            why = "not a manifest or tar, in a folder of manifests or tars"
        else:
            why = f"a {detect_kind(uri)} inside a folder of images is not read; give it as --input to read it"
        yield mark_filtered(rec, STAGE, "skipped_file", why)
