"""ReadImages: folder/glob of images, parquet/jsonl manifests, or img2dataset WebDataset tars.

Everything goes through fsspec, so local paths, ``memory://``, ``gs://`` and ``s3://`` read alike.
The input is expanded into a few *read units* (a chunk of file paths, one manifest, one tar),
which are reshuffled across workers and read with a FlatMap: no large ``beam.Create``.
Every sample comes out as a record with a stable key; a sample that cannot be read comes out
marked dead (``unreadable``) instead of failing the bundle.
"""
from __future__ import annotations

import json
import os
import posixpath
import tarfile
from dataclasses import dataclass
from typing import Any, Iterable, Iterator, Optional

import apache_beam as beam
import fsspec

from core.files import protocol_prefix
from core.record import Field, IMAGE_EXTS, make_key
from transforms.check import MAX_SHORT_CAPTION_CHARS, check_image
from transforms.common import mark_dead

IMAGE_SUFFIXES = tuple("." + e for e in IMAGE_EXTS)
MANIFEST_EXTS = (".jsonl", ".json", ".parquet")
URI_COLUMNS = ("url", "image", "image_path", "img_path", "f_path", "path", "uri")
CAPTION_COLUMNS = ("caption", "short_caption", "alt", "alt_text", "text", "TEXT")
STAGE = "read"
FILES_PER_UNIT = 256


class InputError(ValueError):
    """The --input cannot be used; the message says why and what to do."""


@dataclass(frozen=True)
class ReadUnit:
    kind: str  # "files" | "manifest" | "tar"
    root: str  # folder keys are made relative to
    uris: tuple[str, ...]


def detect_kind(uri: str) -> str:
    low = uri.lower().split("?")[0]
    if low.endswith(MANIFEST_EXTS):
        return "manifest"
    if low.endswith(".tar") or ".tar" in low.rsplit("/", 1)[-1]:
        return "tar"
    return "files"


def list_units(input_uri: str, files_per_unit: int = FILES_PER_UNIT) -> list[ReadUnit]:
    """Expand ``input_uri`` into read units; raises :class:`InputError` when nothing is there."""
    fs, path = fsspec.core.url_to_fs(input_uri)
    prefix = protocol_prefix(fs)
    has_glob = any(ch in path for ch in "*?[{")
    if has_glob:
        if "{" in path:
            import braceexpand

            matched = sorted(p for pat in braceexpand.braceexpand(path) for p in fs.glob(pat))
        else:
            matched = sorted(fs.glob(path))
        root = path.split("*")[0].split("?")[0].split("[")[0].split("{")[0]
        root = root if root.endswith("/") else posixpath.dirname(root)
    elif fs.isdir(path) and fs.exists(posixpath.join(path, "summary.json")) and fs.glob(posixpath.join(path, "shard-*.tar")):
        matched, root = sorted(fs.glob(posixpath.join(path, "shard-*.tar"))), path  # our own output: its shards
    elif fs.isdir(path):
        matched = sorted(p for p in fs.find(path) if p.lower().endswith(IMAGE_SUFFIXES + MANIFEST_EXTS + (".tar",)))
        root = path
        kinds = {detect_kind(p) for p in matched}
        if "files" in kinds:  # a folder of images: manifests/tars inside it are not inputs
            matched = [p for p in matched if detect_kind(p) == "files"]
    elif fs.exists(path):
        matched, root = [path], posixpath.dirname(path)
    else:
        raise InputError(f"--input {input_uri} does not exist; give a folder of images, a glob, "
                         f"a .jsonl/.parquet manifest or WebDataset .tar shards")
    if not matched:
        raise InputError(f"--input {input_uri} matched no images, manifests or tars")
    by_kind: dict[str, list[str]] = {}
    for p in matched:
        by_kind.setdefault(detect_kind(p), []).append(prefix + p)
    if len(by_kind) > 1:
        raise InputError(f"--input {input_uri} mixes {sorted(by_kind)}; point it at one kind of input")
    kind, uris = next(iter(by_kind.items()))
    root = prefix + root
    if kind == "files":
        return [ReadUnit("files", root, tuple(uris[i:i + files_per_unit])) for i in range(0, len(uris), files_per_unit)]
    return [ReadUnit(kind, root, (u,)) for u in uris]


def _relative_stem(uri: str, root: str) -> str:
    rel = uri[len(root):].lstrip("/") if root and uri.startswith(root) else uri.rsplit("/", 1)[-1]
    return os.path.splitext(rel)[0]


def new_record(key: str, f_path: str, short_caption: str = "", **extra: Any) -> dict[str, Any]:
    return {"key": key, "f_path": f_path, "short_caption": short_caption or "", **extra}



def _read_bytes(uri: str) -> bytes:
    with fsspec.open(uri, "rb") as f:
        return f.read()


def _records_from_files(unit: ReadUnit) -> Iterator[dict[str, Any]]:
    for uri in unit.uris:
        stem = _relative_stem(uri, unit.root)
        rec = new_record(make_key(stem, uri[len(unit.root):]), uri)
        try:
            rec[Field.IMAGE_BYTES] = _read_bytes(uri)
        except (OSError, ValueError) as e:
            mark_dead(rec, STAGE, "unreadable", f"{type(e).__name__}: {e}")
        yield rec


def _manifest_rows(uri: str) -> Iterator[dict[str, Any]]:
    if uri.lower().split("?")[0].endswith(".parquet"):
        import pyarrow.parquet as pq

        with fsspec.open(uri, "rb") as f:
            pf = pq.ParquetFile(f)
            for batch in pf.iter_batches(batch_size=1024):
                yield from batch.to_pylist()
        return
    with fsspec.open(uri, "rt", encoding="utf-8") as f:
        text = f.read()
    if uri.lower().endswith(".json") and text.lstrip().startswith("["):
        yield from json.loads(text)
        return
    for lineno, line in enumerate(text.splitlines(), 1):
        if line.strip():
            try:
                yield json.loads(line)
            except ValueError as e:
                yield {"__bad_line__": lineno, "__error__": str(e)}


def _first(row: dict[str, Any], names: Iterable[str]) -> Optional[str]:
    for n in names:
        v = row.get(n)
        if v not in (None, ""):
            return str(v)
    return None


def _records_from_manifest(unit: ReadUnit) -> Iterator[dict[str, Any]]:
    manifest = unit.uris[0]
    base = manifest.rsplit("/", 1)[0] if "/" in manifest else "."
    for i, row in enumerate(_manifest_rows(manifest)):
        image_uri = _first(row, URI_COLUMNS)
        if image_uri is None:
            rec = new_record(make_key(f"row{i}", f"{manifest}#{i}"), f"{manifest}#{i}")
            yield mark_dead(rec, STAGE, "bad_manifest_row",
                            row.get("__error__", f"no image column (one of {', '.join(URI_COLUMNS)})"))
            continue
        if "://" not in image_uri and not image_uri.startswith("/"):
            image_uri = f"{base}/{image_uri}"
        key_src = _first(row, ("key", "__key__", "id"))
        key = make_key(key_src) if key_src else make_key(_relative_stem(image_uri, base), image_uri)
        rec = new_record(key, image_uri, _first(row, CAPTION_COLUMNS) or "")
        long_caption = row.get("long_caption")
        if isinstance(long_caption, str) and long_caption:
            rec[Field.INPUT_CAPTION] = long_caption
        try:
            rec[Field.IMAGE_BYTES] = _read_bytes(image_uri)
        except (OSError, ValueError) as e:
            mark_dead(rec, STAGE, "unreadable", f"{type(e).__name__}: {e}")
        yield rec


def unsafe_member_problem(ti: tarfile.TarInfo) -> Optional[str]:
    """Why a tar member must not be read (absolute path, ``..``, link, device), or None.

    Members are only ever read into memory, never extracted, but a hostile name or a link is a
    sign of a crafted tar: it is dead-lettered rather than trusted.
    """
    name = ti.name
    if not ti.isfile():
        return "not a regular file (link or device)"
    if name.startswith(("/", "\\")) or (len(name) > 1 and name[1] == ":"):
        return "absolute path"
    if ".." in name.replace("\\", "/").split("/"):
        return "path traversal"
    if "\x00" in name:
        return "NUL in name"
    return None


def is_finehard_record(meta: dict[str, Any]) -> bool:
    """True for the ``.json`` member of a shard this pipeline wrote (it has provenance and regions)."""
    return isinstance(meta.get("provenance"), dict) and "bbox_info" in meta and "f_path" in meta


def _records_from_tar(unit: ReadUnit) -> Iterator[dict[str, Any]]:
    """img2dataset layout: ``<key>.jpg`` + optional ``<key>.txt`` and ``<key>.json``, grouped by key."""
    uri = unit.uris[0]

    def flush(k: str, members: dict[str, bytes]) -> Optional[dict[str, Any]]:
        if not k:
            return None
        meta: dict[str, Any] = {}
        if "json" in members:
            try:
                meta = json.loads(members["json"])
            except ValueError:
                meta = {}
        if is_finehard_record(meta):
            # One of our own shards: keep the record's identity and every field it carries.
            rec = new_record(make_key(str(meta.get("key") or k)), str(meta.get("f_path") or f"{uri}#{k}"),
                             str(meta.get("short_caption") or ""))
            rec[Field.INPUT_RECORD] = {f: meta[f] for f in ("caption", "bbox_info", "provenance") if f in meta}
            if meta.get("caption"):
                rec[Field.INPUT_CAPTION] = str(meta["caption"])
        else:
            caption = members.get("txt", b"").decode("utf-8", "replace") or str(meta.get("caption") or "")
            rec = new_record(make_key(k), f"{uri}#{k}", caption)
        image_ext = next((e for e in ("jpg", "jpeg", "png", "webp") if e in members), None)
        if image_ext is None:
            return mark_dead(rec, STAGE, "no_image_member", f"members: {sorted(members)}")
        rec[Field.IMAGE_BYTES] = members[image_ext]
        if meta.get("url"):
            rec["source_url"] = str(meta["url"])
        return rec

    current, members = "", {}
    try:
        with fsspec.open(uri, "rb") as f, tarfile.open(fileobj=f, mode="r|*") as tar:
            for ti in tar:
                if ti.isdir():
                    continue
                problem = unsafe_member_problem(ti)
                if problem:
                    rec = new_record(make_key(ti.name.rsplit("/", 1)[-1].partition(".")[0] or "member", ti.name),
                                     f"{uri}#{ti.name}")
                    yield mark_dead(rec, STAGE, "unsafe_tar_member", f"{problem}: {ti.name!r}")
                    continue
                name = ti.name.rsplit("/", 1)[-1]
                k, _, ext = name.partition(".")
                if k != current:
                    rec = flush(current, members)
                    if rec:
                        yield rec
                    current, members = k, {}
                members[ext.lower()] = tar.extractfile(ti).read()
    except (OSError, tarfile.TarError, EOFError) as e:
        rec = new_record(make_key(posixpath.basename(uri) + Field.TAR_ERROR), uri)
        yield mark_dead(rec, STAGE, "unreadable_tar", f"{type(e).__name__}: {e}")
    rec = flush(current, members)
    if rec:
        yield rec


def read_unit(unit: ReadUnit) -> Iterator[dict[str, Any]]:
    reader = {"files": _records_from_files, "manifest": _records_from_manifest, "tar": _records_from_tar}[unit.kind]
    yield from reader(unit)


class ReadImages(beam.PTransform):
    """``input_uri`` -> records ``{key, f_path, short_caption, image_bytes, width, height, ext}``."""

    def __init__(self, input_uri: str, max_pixels: int = 64_000_000, min_side: int = 8,
                 max_short_caption_chars: int = MAX_SHORT_CAPTION_CHARS):
        super().__init__()
        self.input_uri = input_uri
        self.max_pixels = max_pixels
        self.min_side = min_side
        self.max_short_caption_chars = max_short_caption_chars

    def expand(self, pbegin: beam.pvalue.PBegin) -> beam.PCollection:
        max_pixels, min_side, max_alt = self.max_pixels, self.min_side, self.max_short_caption_chars
        return (pbegin
                | "Input" >> beam.Create([self.input_uri])
                | "ListUnits" >> beam.FlatMap(list_units)
                | "SpreadUnits" >> beam.Reshuffle()
                | "ReadUnit" >> beam.FlatMap(read_unit)
                | "CheckImage" >> beam.Map(check_image, max_pixels=max_pixels, min_side=min_side,
                                              max_short_caption_chars=max_alt))
