"""Read units: an input (a folder, glob, manifest or tars) expanded into a few units (a chunk of file paths, one
manifest or a part of one, one tar) that workers read apart (:mod:`inputs.reader`)."""
from __future__ import annotations

import dataclasses
import os
import posixpath
from dataclasses import dataclass
from typing import Any, Iterable, Iterator, Optional

import fsspec
from fsspec.implementations.local import LocalFileSystem

from core.files import local_path, protocol_of, protocol_prefix
from core.record import ROWS_PER_UNIT
from inputs.http import HTTP_PROTOCOLS
from inputs.lines import _jsonl_parts, _parquet_parts
from inputs.listing import _clashing, _glob_sidecars, _sorted_local_files, _without_sidecars, sidecars_of
from inputs.names import _is_jsonl, _is_parquet, has_image_ext

MANIFEST_EXTS = (".jsonl", ".json", ".parquet")
FILES_PER_UNIT = 256


class InputError(ValueError):
    """The --input cannot be used; the message says why and what to do."""


@dataclass(frozen=True)
class ReadUnit:
    kind: str  # "files" | "manifest" | "tar" | "skipped"
    root: str  # folder keys are made relative to
    uris: tuple[str, ...]
    ext_keys: tuple[str, ...] = ()  # files whose key keeps the extension: their stem clashes with another file's
    # A part of one manifest (see split_unit): parquet row groups [a, b) or jsonl bytes [a, b); () = all of it
    span: tuple[int, ...] = ()
    first_row: int = 0  # the part's first row in the whole manifest (names of bad rows, key clash hashes)
    # caption files of the unit's images (``0001.txt``/``0001.json`` beside ``0001.jpg``): read with their
    # image, never items of their own (:func:`inputs.listing.sidecars_of`)
    sidecars: tuple[str, ...] = ()
    ordinal: int = 0  # the unit's place in the listing (list_units): its records' input order (Field.ORDER)


def detect_kind(uri: str) -> str:
    low = uri.lower().split("?")[0]
    if low.endswith(MANIFEST_EXTS):
        return "manifest"
    if low.endswith(".tar") or ".tar" in low.rsplit("/", 1)[-1]:
        return "tar"
    return "files"


def is_tar_sidecar(uri: str) -> bool:
    """A file that img2dataset or this pipeline writes beside tar shards: ``sizes.json`` (samples per
    tar), ``<shard>_stats.json``, ``<shard>.parquet`` (img2dataset's metadata). Beside tars it is
    not a manifest: the folder stays a folder of tars and the file is ``skipped_file``."""
    name = uri.split("?")[0].rsplit("/", 1)[-1].lower()
    return name in ("sizes.json", "stats.json") or name.endswith(("_stats.json", ".parquet"))


def _sidecars_beside_tars(kinds: dict[str, list[str]]) -> bool:
    """True when the manifests found with tars are all :func:`is_tar_sidecar` (and a ``.parquet``
    has a tar of its own name): the input is the tars."""
    if set(kinds) != {"manifest", "tar"}:
        return False
    tars = {u.rsplit(".tar", 1)[0] for u in kinds["tar"]}
    return all(is_tar_sidecar(u) and (not u.lower().endswith(".parquet") or u[:-len(".parquet")] in tars)
               for u in kinds["manifest"])


def _input_fs(input_uri: str) -> tuple[fsspec.AbstractFileSystem, str]:
    """The filesystem and path of ``--input``: a local path literally (``::`` is part of the name)."""
    path = local_path(input_uri)
    if path is not None:
        fs = LocalFileSystem()
        return fs, fs._strip_protocol(path)
    return fsspec.core.url_to_fs(input_uri)


def _folder_kinds(folder: str) -> tuple[bool, bool, set[str]]:
    """``(any image, any other file, kinds of the manifests/tars)`` under a local folder; stops at
    the first image (then the folder is a folder of images, whatever else it holds). A sidecar of
    tars (:func:`is_tar_sidecar`) is of kind ``sidecar``: a manifest unless the folder holds tars."""
    others, kinds = False, set()
    stack = [folder]
    while stack:
        try:
            with os.scandir(stack.pop()) as entries:
                for e in entries:
                    if e.is_dir(follow_symlinks=False):
                        stack.append(e.path)
                        continue
                    kind = detect_kind(e.path)
                    if kind == "manifest" and is_tar_sidecar(e.path) and (
                            not e.path.lower().endswith(".parquet") or os.path.exists(e.path[:-8] + ".tar")):
                        kinds.add("sidecar")
                    elif kind != "files":
                        kinds.add(kind)
                    elif has_image_ext(e.path):
                        return True, others, kinds
                    else:
                        others = True
        except OSError:
            continue
    return False, others, kinds


def _file_units(root: str, files: Iterable[tuple[Any, ...]], files_per_unit: int,
                kind: str = "files") -> Iterator[ReadUnit]:
    """``files`` (``(uri, its key keeps the extension[, its sidecars])``, in listing order) in units of
    ``files_per_unit`` files; an image's sidecars go in its unit and are not counted as files."""
    chunk: list[str] = []
    ext_keys: list[str] = []
    side: dict[str, None] = {}  # in order, once each (b.jpg and b.png share b.txt)
    for uri, keep_ext, *more in files:
        chunk.append(uri)
        if keep_ext:
            ext_keys.append(uri)
        side.update(dict.fromkeys(more[0] if more else ()))
        if len(chunk) == files_per_unit:
            yield ReadUnit(kind, root, tuple(chunk), tuple(ext_keys), sidecars=tuple(side))
            chunk, ext_keys, side = [], [], {}
    if chunk:
        yield ReadUnit(kind, root, tuple(chunk), tuple(ext_keys), sidecars=tuple(side))


def _local_folder_units(input_uri: str, path: str, files_per_unit: int) -> Iterator[ReadUnit]:
    """The units of a local folder, as :func:`iter_units` lists any folder, one folder's names in memory
    at a time (a folder's files to skip are held until the end: normally a few)."""
    images, others, kinds = _folder_kinds(path)
    if "sidecar" in kinds:  # sizes.json beside tars is theirs; alone or with manifests it is a manifest
        kinds.discard("sidecar")
        if "tar" not in kinds:
            kinds.add("manifest")
    if images or (others and not kinds):  # a folder of images: everything that is not a manifest/tar
        def select(p: str) -> bool:
            return detect_kind(p) == "files"
        kind = "files"
    elif not kinds:
        raise InputError(f"--input {input_uri} matched no images, manifests or tars")
    elif len(kinds) > 1:
        raise InputError(f"--input {input_uri} mixes {sorted(kinds)}; point it at one kind of input")
    else:
        kind = next(iter(kinds))

        def select(p: str) -> bool:
            return detect_kind(p) == kind  # the tars' sidecars are skipped files
    skipped: list[str] = []

    def chosen() -> Iterator[tuple[str, bool, tuple[str, ...]]]:
        for p, selected, clashes, sidecars in _sorted_local_files(path, select, sidecars=kind == "files"):
            if selected:
                yield p, clashes, sidecars
            else:
                skipped.append(p)

    if kind == "files":
        yield from _file_units(path, chosen(), files_per_unit)
    else:
        yield from (ReadUnit(kind, path, (p,)) for p, _, _ in chosen())
    yield from _file_units(path, ((p, False) for p in skipped), files_per_unit, kind="skipped")


def list_units(input_uri: str, files_per_unit: int = FILES_PER_UNIT) -> list[ReadUnit]:
    """Expand ``input_uri`` into read units (:func:`iter_units`, all of them, numbered in listing order);
    :class:`InputError` when nothing is there."""
    return [dataclasses.replace(u, ordinal=i) for i, u in enumerate(iter_units(input_uri, files_per_unit))]


def iter_units(input_uri: str, files_per_unit: int = FILES_PER_UNIT) -> Iterator[ReadUnit]:
    """The read units of ``input_uri`` one at a time, in listing order; :class:`InputError` (before
    the first unit) when nothing is there.

    In a folder every file becomes a record: images are read; files without an image extension
    are read when their bytes are an image, else filtered as ``unsupported_format``; manifests and
    tars inside a folder of images (and stray files in a folder of manifests or tars) are
    filtered as ``skipped_file``. The files of a folder are listed in the order of their sorted
    paths; a local folder is walked without holding the whole listing (a remote one is listed whole).
    An image's ``.txt``/``.json`` of the same name in the same folder (the img2dataset/WebDataset
    layout ``0001.jpg`` + ``0001.txt`` + ``0001.json``; for a glob, matched or not) is its sidecar:
    read with it as a tar sample's members are, never an item of its own.
    """
    if input_uri is None or not str(input_uri).strip():
        raise InputError("--input is empty; give a folder, glob, manifest or tar")
    if protocol_of(input_uri) in HTTP_PROTOCOLS:
        yield from _url_units(input_uri)
        return
    fs, path = _input_fs(input_uri)
    prefix = protocol_prefix(fs)
    listed = _listing(input_uri, fs, path)
    if listed is None:  # a local folder: walked, never listed whole
        yield from _local_folder_units(input_uri, path, files_per_unit)
        return
    matched, root, skipped, side = listed
    if not matched:
        raise InputError(f"--input {input_uri} matched no images, manifests or tars")
    by_kind: dict[str, list[str]] = {}
    for p in matched:
        by_kind.setdefault(detect_kind(p), []).append(prefix + p)
    if _sidecars_beside_tars(by_kind):  # a folder of tars with its sizes.json: the sidecars are skipped
        skipped = sorted(skipped + [u[len(prefix):] for u in by_kind.pop("manifest")])
    if len(by_kind) > 1:
        raise InputError(f"--input {input_uri} mixes {sorted(by_kind)}; point it at one kind of input")
    kind, uris = next(iter(by_kind.items()))
    root = prefix + root
    if kind == "files":
        clash = set(_clashing(uris, root))
        side = {prefix + p: tuple(prefix + s for s in sc) for p, sc in side.items()}
        yield from _file_units(root, ((u, u in clash, side.get(u, ())) for u in uris), files_per_unit)
    else:
        yield from (ReadUnit(kind, root, (u,)) for u in uris)
    yield from _file_units(root, ((prefix + p, False) for p in skipped), files_per_unit, kind="skipped")


def _url_units(input_uri: str) -> Iterator[ReadUnit]:
    """The units of an http(s) input: URLs are not listed; ``{a,b}`` / ``{000..009}`` are expanded."""
    import braceexpand

    urls = list(braceexpand.braceexpand(input_uri)) if "{" in input_uri else [input_uri]
    kinds = {detect_kind(u) for u in urls}
    if len(kinds) > 1:
        raise InputError(f"--input {input_uri} mixes {sorted(kinds)}; point it at one kind of input")
    yield from (ReadUnit(detect_kind(u), u.rsplit("/", 1)[0], (u,)) for u in urls)


_Listed = tuple[list[str], str, list[str], dict[str, tuple[str, ...]]]


def _listing(input_uri: str, fs: fsspec.AbstractFileSystem, path: str) -> Optional[_Listed]:
    """What ``path`` on ``fs`` holds: ``(matched paths, root, skipped paths, image -> its sidecars)``, without the
    filesystem's prefix; None for a local folder (walked by :func:`_local_folder_units`, never listed whole)."""
    skipped: list[str] = []
    side: dict[str, tuple[str, ...]] = {}  # image -> its sidecars (globs and remote folders)
    has_glob = any(ch in path for ch in "*?[{")
    if has_glob and not fs.exists(path):
        matched, root, side = _glob_matches(fs, path)
    elif fs.isdir(path) and fs.exists(posixpath.join(path, "summary.json")) and fs.glob(posixpath.join(path, "shard-*.tar")):
        matched, root = sorted(fs.glob(posixpath.join(path, "shard-*.tar"))), path  # our own output: its shards
    elif fs.isdir(path) and isinstance(fs, LocalFileSystem):
        return None
    elif fs.isdir(path):
        matched, skipped, side = _remote_folder(fs, path)
        root = path
    elif fs.exists(path):
        matched, root = [path], posixpath.dirname(path)
    else:
        raise InputError(f"--input {input_uri} does not exist; give a folder of images, a glob, "
                         f"a .jsonl/.parquet manifest or WebDataset .tar shards")
    return matched, root, skipped, side


def _glob_matches(fs: fsspec.AbstractFileSystem,
                  path: str) -> tuple[list[str], str, dict[str, tuple[str, ...]]]:
    """``(the files a glob matches, sidecars set aside; the folder their keys are relative to; their sidecars)``."""
    def glob(pattern: str) -> list[str]:  # folders a pattern matches are not items
        return [p for p, info in fs.glob(pattern, detail=True).items() if info.get("type") != "directory"]

    if "{" in path:
        import braceexpand

        matched = sorted(p for pat in braceexpand.braceexpand(path) for p in glob(pat))
    else:
        matched = sorted(glob(path))
    root = path.split("*")[0].split("?")[0].split("[")[0].split("{")[0]
    root = root if root.endswith("/") else posixpath.dirname(root)
    side = _glob_sidecars(fs, matched)
    return _without_sidecars(matched, side), root, side


def _remote_folder(fs: fsspec.AbstractFileSystem, path: str) -> tuple[list[str], list[str], dict[str, tuple[str, ...]]]:
    """``(files read, files skipped, image -> its sidecars)`` of a folder on a remote filesystem, listed whole."""
    found = sorted(fs.find(path))
    side = sidecars_of(found)
    found = _without_sidecars(found, side)
    inputs = [p for p in found if detect_kind(p) != "files"]
    images = [p for p in found if detect_kind(p) == "files" and has_image_ext(p)]
    others = [p for p in found if detect_kind(p) == "files" and not has_image_ext(p)]
    if images or (others and not inputs):  # a folder of images: everything that is not a manifest/tar
        matched, skipped = images + others, inputs
    else:
        matched, skipped = inputs, others
    matched.sort()
    return matched, skipped, side


def split_unit(unit: ReadUnit, rows_per_unit: int = ROWS_PER_UNIT) -> Iterator[ReadUnit]:
    """A manifest as parts of about ``rows_per_unit`` rows that workers read independently.

    Parquet splits at row groups (from its metadata); a UTF-8 ``.jsonl`` at line starts (one
    sequential scan of its bytes, no parsing). Other units, http manifests, UTF-16 and ``.json``
    files stay whole; so does any manifest that cannot be scanned (its reader says why). Keys
    are the same as when the manifest is read whole, except that two rows in different parts
    deriving the same key are not renamed: the shard writer dead-letters the second
    (``write:duplicate_key``).
    """
    uri = unit.uris[0] if unit.uris else ""
    if unit.kind != "manifest" or unit.span or protocol_of(uri) in HTTP_PROTOCOLS or rows_per_unit <= 0:
        yield unit
        return
    parts: list[tuple[tuple[int, int], int]] = []
    try:
        if _is_parquet(uri):
            parts = _parquet_parts(uri, rows_per_unit)
        elif _is_jsonl(uri):
            parts = _jsonl_parts(uri, rows_per_unit)
    except Exception:  # noqa: BLE001 - read whole; the reader dead-letters what is wrong with it
        parts = []
    if len(parts) <= 1:
        yield unit
        return
    for span, first in parts:
        yield dataclasses.replace(unit, span=span, first_row=first)
