"""Files every layer writes and names: atomic writes, and the URI prefix of a filesystem."""
from __future__ import annotations

import os
from typing import Optional

import fsspec
from fsspec.implementations.local import LocalFileSystem


def protocol_prefix(fs: fsspec.AbstractFileSystem) -> str:
    """``""`` for the local filesystem, else ``"proto://"``: what turns an fsspec path back into a URI."""
    proto = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
    return "" if proto in ("file", "local") else f"{proto}://"


def atomic_write(fs: Optional[fsspec.AbstractFileSystem], path: str, data: bytes, tmp: Optional[str] = None,
                 durable: bool = False) -> None:
    """Write ``data`` to ``path`` so a reader sees either no file or the whole of it.

    The bytes go to ``tmp`` (default: ``PATH.tmp-PID``, unique to this process) in the same folder
    and are then renamed over ``path``. ``fs=None`` means a local path (plain file calls: fsspec
    costs several times more per small file). ``durable``: on a local disk, the bytes are flushed to
    the device before the rename (for markers that say "this is complete").
    """
    tmp = tmp or f"{path}.tmp-{os.getpid()}"
    if fs is None or isinstance(fs, LocalFileSystem):
        try:
            with open(tmp, "wb") as f:
                f.write(data)
                if durable:
                    f.flush()
                    os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            try:
                os.remove(tmp)  # a full disk leaves no half-written file behind
            except OSError:
                pass
            raise
        return
    with fs.open(tmp, "wb") as f:
        f.write(data)
    fs.mv(tmp, path)
