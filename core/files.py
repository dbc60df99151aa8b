"""Files every layer writes and names: atomic, durable writes, the URI prefix of a filesystem, local or
not, and the rule for tar member names read from a tar made elsewhere."""
from __future__ import annotations

import contextlib
import os
import stat
import tarfile
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


def member_name_problem(name: str) -> Optional[str]:
    """Why a tar member name must not be used (absolute path, ``..``, NUL), or None.

    The one rule for every reader of a tar made elsewhere: the curation reader (``unsafe_tar_member``),
    ``finehard stats``, ``preview``, the exports (which turn member names into file names) and
    training's shard reader.
    """
    if name.startswith(("/", "\\")) or (len(name) > 1 and name[1] == ":"):
        return "absolute path"
    if ".." in name.replace("\\", "/").split("/"):
        return "path traversal"
    if "\x00" in name:
        return "NUL in name"
    return None


def unsafe_member_problem(ti: tarfile.TarInfo) -> Optional[str]:
    """Why a tar member must not be read (a link or device, or :func:`member_name_problem`), or None.

    Members are only ever read into memory, never extracted as they are, but a hostile name or a
    link is a sign of a crafted tar: it is skipped and reported rather than trusted.
    """
    if not ti.isfile():
        return "not a regular file (link or device)"
    return member_name_problem(ti.name)


class NotRegularFile(OSError):
    """A path that names a FIFO, a device, a folder or a socket where a file's bytes are read."""


def open_regular_local(path: str) -> IO[bytes]:
    """Local ``path`` opened for reading if it is a regular file (:class:`NotRegularFile` else).

    ``O_NONBLOCK`` makes opening a FIFO return at once instead of waiting for a writer; ``fstat``
    on the opened descriptor then says what it is (a link to ``/dev/zero`` is a character device).
    """
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise NotRegularFile(f"{path} is not a regular file")
        os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


@contextlib.contextmanager
def open_regular(fs: Optional[fsspec.AbstractFileSystem], path: str) -> Iterator[IO[bytes]]:
    """``path`` opened for reading; on a local disk only a regular file (:func:`open_regular_local`)."""
    if fs is not None and not isinstance(fs, LocalFileSystem):
        with fs.open(path, "rb") as f:
            yield f
        return
    with open_regular_local(path) as f:
        yield f


def read_bounded(fs: Optional[fsspec.AbstractFileSystem], path: str, limit: int) -> bytes:
    """The bytes of a small file (a marker, a lock, a summary): :func:`open_regular`, at most ``limit``
    bytes read; ``ValueError`` when it holds more (it is not what it claims to be)."""
    with open_regular(fs, path) as f:
        data = f.read(limit + 1)
    if len(data) > limit:
        raise ValueError(f"{path} is larger than {limit} bytes")
    return data


def fsync_dir(path: str) -> None:
    """Make the entries of local folder ``path`` (a rename, a new or removed file) durable."""
    fd = os.open(path or ".", os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_open(fs: Optional[fsspec.AbstractFileSystem], path: str, tmp: Optional[str] = None,
                durable: bool = False) -> Iterator[IO[bytes]]:
    """A binary file to stream into; it appears at ``path`` whole, or not at all.

    The bytes go to ``tmp`` (default: ``PATH.tmp-PID``, unique to this process) in the same folder,
    renamed over ``path`` when the block ends without an error; on an error (a full disk, an
    interrupt) the temporary file is removed. ``fs=None`` means a local path (plain file calls:
    fsspec costs several times more per small file). ``durable``: on a local disk the bytes are
    flushed to the device before the rename, and the folder after it, so that a power cut leaves
    the whole file or none (as Beam's file sinks commit); object stores publish a whole object anyway.
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
            if durable:
                fsync_dir(os.path.dirname(path))
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
