"""Image bytes parked in a folder between reading and writing, so records stay small between stages.

A local run (Beam's FnApiRunner) runs one fused stage at a time over all of its input and keeps
every stage boundary (the shard count, the duplicate lookup, Flattens, the group by shard) in
memory. With the image bytes inside the records, those boundaries hold the whole dataset. With
a spill folder the reader writes each live image once, the record carries its path
(``_spill``), the model stages read it back one batch at a time (:func:`image_bytes`, through
``transforms.common.open_image``) and the shard writer reads it when it writes the tar. The
bytes are the same either way, so the shards are byte-identical with or without spilling.

Distributed runners (Dataflow, Flink) shuffle to disk themselves and run without a spill folder
unless one is given.
"""
from __future__ import annotations

import glob
import hashlib
import os
import posixpath
import shutil
import tempfile
import uuid
from typing import Any, Optional

import fsspec
from fsspec.implementations.local import LocalFileSystem

from core.files import atomic_write
from core.record import Field, SampleError

SPILL_PREFIX = ".spill-"  # the run's spill folder inside a local output folder
AUTO, NONE = "auto", "none"


def spill_name(rec: dict[str, Any]) -> str:
    """A file name unique to the sample (key and source) and its bytes."""
    who = hashlib.sha1(f"{rec.get('key')}\0{rec.get('f_path')}".encode("utf-8")).hexdigest()[:20]
    return f"{who}-{image_sha256(rec)[:20]}"


def spill_image(rec: dict[str, Any], root: str) -> dict[str, Any]:
    """Move a live record's bytes to ``root``; dead and filtered records just drop theirs.

    Bytes that a local source file holds unchanged (``Field.SOURCE``) are not copied: the record
    keeps their sha256, and :func:`image_bytes` reads them again from the source.
    """
    if rec.get(Field.IMAGE_BYTES) is None or Field.DEAD in rec or Field.FILTERED in rec:
        rec.pop(Field.IMAGE_BYTES, None)
        return rec
    if Field.SOURCE in rec:
        image_sha256(rec)
        rec.pop(Field.IMAGE_BYTES)
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


def image_bytes(rec: dict[str, Any]) -> bytes:
    """The record's image: in the record, read back from the spill folder, or from its unchanged source.

    A source file whose bytes no longer match the sha256 taken when it was read raises
    ``SampleError("source_changed")``: the sample is dead-lettered, never written with other bytes.
    """
    data = rec.get(Field.IMAGE_BYTES)
    if data is not None:
        return data
    source = rec.get(Field.SOURCE)
    if source is not None and Field.SPILL not in rec:
        try:
            with open(source, "rb") as f:
                data = f.read()
        except OSError as e:
            raise SampleError("source_changed", f"{source} can no longer be read: {type(e).__name__}: {e}") from None
        if hashlib.sha256(data).hexdigest() != rec.get(Field.SHA256):
            raise SampleError("source_changed", f"{source} changed since it was read and checked")
        return data
    path = rec.get(Field.SPILL)
    if path is None:
        raise KeyError(f"record {rec.get('key')!r} carries no image bytes")
    if os.path.isabs(path):
        with open(path, "rb") as f:
            return f.read()
    with fsspec.open(path, "rb") as f:
        return f.read()


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
    none on distributed runners. ``none``: no spilling. Anything else: a folder (local or fsspec
    URI) under which this run makes its own subfolder. A spill folder left in OUTPUT by a killed
    run is removed by the next run into it.
    """

    def __init__(self, value: str, local_runner: bool, output: Optional[str] = None):
        self.root: Optional[str] = None
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

    def __exit__(self, *exc: Any) -> None:
        if self.root is None:
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
