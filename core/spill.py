"""Image bytes kept out of the records between reading and writing, so records stay small between stages.

A record whose bytes its source holds exactly (``Field.SOURCE``: a local file, a file on an fsspec
filesystem such as ``gs://``, or a member of an uncompressed tar, by byte range) drops them after
reading: the model stages (:func:`image_bytes`, through ``transforms.common.open_image``) and the
shard writer read them again from there, sha256-checked. Other records (converted images,
compressed-tar members, http(s) downloads, inline manifest bytes) park their bytes in the run's
spill folder (``_spill``) when there is one, and otherwise carry them. The bytes are the same
either way, so the shards are byte-identical however the bytes travelled.

Local runs (Beam's FnApiRunner) keep every stage boundary (the shard count, the duplicate lookup,
Flattens, the group by shard) in memory: they spill to ``OUTPUT/.spill-*`` by default. Distributed
runners (Dataflow, Flink, Dask) shuffle across the network: there re-readable records always drop
their bytes, and the others are spilled only to a ``--spill-dir`` every worker reaches
(``gs://bucket/tmp``).
"""
from __future__ import annotations

import glob
import hashlib
import logging
import os
import posixpath
import shutil
import tempfile
import uuid
from typing import Any, Optional, Union

import fsspec
from fsspec.implementations.local import LocalFileSystem

from core.files import atomic_write, local_path, protocol_of
from core.record import Field, SampleError

LOG = logging.getLogger("finehard")
SPILL_PREFIX = ".spill-"  # the run's spill folder inside a local output folder
AUTO, NONE = "auto", "none"
# Field.SOURCE: a whole file (local path or fsspec URI), or (uri, offset, size) of a range of it
Source = Union[str, tuple[str, int, int]]


def spill_name(rec: dict[str, Any]) -> str:
    """A file name unique to the sample (key and source) and its bytes."""
    who = hashlib.sha1(f"{rec.get('key')}\0{rec.get('f_path')}".encode("utf-8")).hexdigest()[:20]
    return f"{who}-{image_sha256(rec)[:20]}"


def spill_image(rec: dict[str, Any], root: Optional[str]) -> dict[str, Any]:
    """Take a live record's bytes out of it; dead and filtered records just drop theirs.

    Bytes that their source holds exactly (``Field.SOURCE``) are dropped: the record keeps their
    sha256, and :func:`image_bytes` reads them again from the source. The others are moved to
    ``root``; with no ``root`` they stay in the record.
    """
    if rec.get(Field.IMAGE_BYTES) is None or Field.DEAD in rec or Field.FILTERED in rec:
        rec.pop(Field.IMAGE_BYTES, None)
        return rec
    if Field.SOURCE in rec:
        image_sha256(rec)
        rec.pop(Field.IMAGE_BYTES)
        return rec
    if root is None:
        return rec
    name = spill_name(rec)
    data = rec.pop(Field.IMAGE_BYTES)
    if os.path.isabs(root):  # a local folder: plain file calls (fsspec costs ~6x more per small read)
        path = os.path.join(root, name)
        if not os.path.exists(path):
            atomic_write(None, path, data)  # readers never see a half-written file
        rec[Field.SPILL] = path
        return rec
    fs, base = fsspec.core.url_to_fs(root)
    path = posixpath.join(base, name)
    if not fs.exists(path):
        with fs.open(path, "wb") as f:  # object stores make an object visible only when it is complete
            f.write(data)
    rec[Field.SPILL] = fs.unstrip_protocol(path)
    return rec


def read_source(source: Source) -> bytes:
    """The bytes ``source`` names: a whole file, or ``size`` bytes from ``offset`` (one range read).

    A local path is opened literally; a URI goes to its fsspec filesystem without URL chaining
    (``a::b`` is a name), as ``inputs.opening`` reads it.
    """
    uri, offset, size = (source, 0, None) if isinstance(source, str) else source
    path = local_path(uri)
    if path is not None:
        with open(path, "rb") as f:
            f.seek(offset)
            return f.read(-1 if size is None else size)
    fs = fsspec.filesystem(protocol_of(uri))
    return fs.cat_file(fs._strip_protocol(uri), start=offset, end=None if size is None else offset + size)


def describe_source(source: Source) -> str:
    """A source as a dead letter's detail names it."""
    return source if isinstance(source, str) else f"{source[0]} (bytes {source[1]}+{source[2]})"


def image_bytes(rec: dict[str, Any]) -> bytes:
    """The record's image: in the record, read back from the spill folder, or from its unchanged source.

    A source whose bytes no longer match the sha256 taken when it was read (a file or tar rewritten
    meanwhile) raises ``SampleError("source_changed")``: the sample is dead-lettered, never written
    with other bytes.
    """
    data = rec.get(Field.IMAGE_BYTES)
    if data is not None:
        return data
    source = rec.get(Field.SOURCE)
    if source is not None and Field.SPILL not in rec:
        try:
            data = read_source(source)
        except OSError as e:
            raise SampleError("source_changed", f"{describe_source(source)} can no longer be read: "
                                                f"{type(e).__name__}: {e}") from None
        if hashlib.sha256(data).hexdigest() != rec.get(Field.SHA256):
            raise SampleError("source_changed", f"{describe_source(source)} changed since it was read and checked")
        return data
    path = rec.get(Field.SPILL)
    if path is None:
        raise KeyError(f"record {rec.get('key')!r} carries no image bytes")
    return read_source(path)  # a local path or an fsspec URI of the spill folder


def image_sha256(rec: dict[str, Any]) -> str:
    """sha256 hex of the record's stored image bytes, computed on first use and kept on the record."""
    if Field.SHA256 not in rec:
        rec[Field.SHA256] = hashlib.sha256(image_bytes(rec)).hexdigest()
    return rec[Field.SHA256]


def check_spill_dir(value: str) -> None:
    """``--spill-dir`` must be auto, none, or a local folder that exists or whose parent does (the run makes
    its own subfolder in it, and removes the folder too if it made it)."""
    if value in (AUTO, NONE):
        return
    fs, base = fsspec.core.url_to_fs(value)
    if isinstance(fs, LocalFileSystem) and not os.path.isdir(base) and not os.path.isdir(os.path.dirname(base)):
        raise ValueError(f"--spill-dir {value} is not an existing folder (nor is its parent); create it, "
                         "or use --spill-dir auto")


class SpillDir:
    """The run's spill folder for ``--spill-dir``; removed with everything in it when the run ends.

    ``auto``: on local runners ``OUTPUT/.spill-*`` when the output is a local folder (the disk that
    takes the shards has room for the images; ``/tmp`` is often a RAM disk), else a temp folder;
    none on distributed runners (a folder on one worker is no use to the others). ``none``: no
    spilling. Anything else: a folder (local or fsspec URI) under which this run makes its own
    subfolder. A spill folder left in OUTPUT by a killed run is removed by the next run into it.
    """

    def __init__(self, value: str, local_runner: bool, output: Optional[str] = None):
        self.root: Optional[str] = None
        self.local_runner = local_runner
        self.made: Optional[str] = None  # a --spill-dir folder this run created (removed at the end if empty)
        if value == AUTO and local_runner:
            if output and fsspec.core.split_protocol(output)[0] in (None, "file", "local"):
                base = fsspec.core.url_to_fs(output)[1]
                os.makedirs(base, exist_ok=True)
                for stale in glob.glob(os.path.join(glob.escape(base), SPILL_PREFIX + "*")):
                    shutil.rmtree(stale, ignore_errors=True)
                self.root = tempfile.mkdtemp(prefix=SPILL_PREFIX, dir=base)
            else:
                self.root = tempfile.mkdtemp(prefix="finehard-spill-")
        elif value not in (AUTO, NONE):
            fs, base = fsspec.core.url_to_fs(value)
            if isinstance(fs, LocalFileSystem) and not os.path.isdir(base):
                self.made = base
            sub = posixpath.join(base, "finehard-spill-" + uuid.uuid4().hex[:12])
            fs.makedirs(sub, exist_ok=True)
            self.root = sub if isinstance(fs, LocalFileSystem) else fs.unstrip_protocol(sub)

    def __enter__(self) -> "SpillDir":
        return self

    def __exit__(self, exc_type: Any, *exc: Any) -> None:
        if self.root is None:
            return
        if exc_type is not None and not self.local_runner:
            # Ctrl-C, or a lost connection, stops only the launcher: the job may still be running on the
            # cluster and reading its spilled images. Deleting them would dead-letter its samples.
            LOG.warning("the launcher stopped (%s) but the job may still run: its spill folder %s is kept; "
                        "remove it once the job has ended", exc_type.__name__, self.root)
            return
        fs, base = fsspec.core.url_to_fs(self.root)
        if isinstance(fs, LocalFileSystem):
            shutil.rmtree(base, ignore_errors=True)
            if self.made:
                try:
                    os.rmdir(self.made)
                except OSError:
                    pass  # something else was put there meanwhile: leave it
        elif fs.exists(base):
            fs.rm(base, recursive=True)
