"""Files every layer writes and names: atomic writes, the URI prefix of a filesystem, local or not."""
from __future__ import annotations

import contextlib
import os
from typing import IO, Iterator, Optional

import fsspec
from fsspec.implementations.local import LocalFileSystem

LOCAL_PROTOCOLS = ("file", "local")


def protocol_of(uri: str) -> Optional[str]:
    """``"gs"`` for ``gs://b/x``; None for a local path (no ``scheme://``). Never parses ``::`` chains."""
    head, sep, _ = uri.partition("://")
    if not sep or not head or "/" in head:
        return None
    return head.lower()


def local_path(uri: str) -> Optional[str]:
    """The local path ``uri`` names literally, or None when it is not local."""
    proto = protocol_of(uri)
    if proto is None:
        return uri
    if proto in LOCAL_PROTOCOLS:
        return uri.partition("://")[2]
    return None


def protocol_prefix(fs: fsspec.AbstractFileSystem) -> str:
    """``""`` for the local filesystem, else ``"proto://"``: what turns an fsspec path back into a URI."""
    proto = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
    return "" if proto in ("file", "local") else f"{proto}://"


@contextlib.contextmanager
def atomic_open(fs: Optional[fsspec.AbstractFileSystem], path: str, tmp: Optional[str] = None,
                durable: bool = False) -> Iterator[IO[bytes]]:
    """A binary file to stream into; it appears at ``path`` whole, or not at all.

    The bytes go to ``tmp`` (default: ``PATH.tmp-PID``, unique to this process) in the same folder,
    renamed over ``path`` when the block ends without an error; on an error (a full disk, an
    interrupt) the temporary file is removed. ``fs=None`` means a local path (plain file calls:
    fsspec costs several times more per small file). ``durable``: on a local disk the bytes are
    flushed to the device before the rename (for markers that say "this is complete").
    """
    tmp = tmp or f"{path}.tmp-{os.getpid()}"
    local = fs is None or isinstance(fs, LocalFileSystem)
    try:
        with (open(tmp, "wb") if local else fs.open(tmp, "wb")) as f:
            yield f
            if durable and local:
                f.flush()
                os.fsync(f.fileno())
        if local:
            os.replace(tmp, path)
        else:
            fs.mv(tmp, path)
    except BaseException:
        try:
            os.remove(tmp) if local else fs.rm(tmp)
        except (OSError, FileNotFoundError):
            pass
        raise


def atomic_write(fs: Optional[fsspec.AbstractFileSystem], path: str, data: bytes, tmp: Optional[str] = None,
                 durable: bool = False) -> None:
    """Write ``data`` to ``path`` through :func:`atomic_open`."""
    with atomic_open(fs, path, tmp, durable) as f:
        f.write(data)
