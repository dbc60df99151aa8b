"""ReadImages: folder/glob of images, parquet/jsonl manifests, or img2dataset WebDataset tars.

The input is expanded into a few *read units* (a chunk of file paths, one manifest, one tar),
which are reshuffled across workers and read with a FlatMap: no large ``beam.Create``.
Every input item comes out as exactly one record with a stable key: read, or marked dead
(``unreadable``, ``file_too_large``, ``not_a_regular_file``, ``unsupported_scheme`` ...) or
filtered (``unsupported_format``, ``skipped_file``) with a reason; nothing raises out of a unit.

How a path is opened (``open_input`` / ``read_limited``):

* a local path (no ``scheme://``, or ``file://``) is opened literally with ``os.open`` (no fsspec
  URL parsing, so ``a::b.jpg`` is a file name, not a URL chain), only when it is a regular file
  (a FIFO, device or folder is ``not_a_regular_file``, never waited on or read);
* ``http://`` and ``https://`` are fetched with the standard library (timeouts, retries, a user
  agent, at most ``HTTP_MAX_REDIRECTS`` redirects, only to http(s));
* the fsspec filesystems in ``FSSPEC_PROTOCOLS`` (``memory://``, ``gs://``, ``s3://`` ...) and the
  input's own protocol go through that filesystem, again without URL chaining;
* any other scheme (``ftp://``, ``data:``, unknown) is ``unsupported_scheme`` at once.

At most ``max_image_bytes + 1`` bytes of an image are ever read (``file_too_large``). A record
whose bytes can be read again exactly and cheaply (a local or fsspec file; a member of an
uncompressed tar, by byte range) says where in ``Field.SOURCE`` (:func:`source_of`), so the bytes
need not travel with it (``core.spill``).
"""
from __future__ import annotations

import dataclasses
import functools
import hashlib
import http.client
import io
import itertools
import json
import os
import posixpath
import socket
import stat
import tarfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections import Counter, deque
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from typing import IO, Any, Callable, Iterable, Iterator, Optional

import apache_beam as beam
import fsspec
from fsspec.implementations.local import LocalFileSystem

from core.files import LOCAL_PROTOCOLS, atomic_write, local_path, protocol_of, protocol_prefix, unsafe_member_problem
from core.record import (Field, IMAGE_EXTS, NUM_NEGATIVES, PROJECT_VERSION, REGION_FIELDS, is_valid_text,
                         make_key, valid_text)
from inputs.check import MAX_SHORT_CAPTION_CHARS, check_image
from core.outcomes import bump, mark_dead, mark_filtered
from core.record import SampleError

IMAGE_SUFFIXES = tuple("." + e for e in IMAGE_EXTS)
MANIFEST_EXTS = (".jsonl", ".json", ".parquet")
URI_COLUMNS = ("url", "image", "image_path", "img_path", "f_path", "path", "uri")
CAPTION_COLUMNS = ("caption", "short_caption", "alt", "alt_text", "text", "TEXT")
STAGE = "read"
FILES_PER_UNIT = 256
ROWS_PER_UNIT = 5000  # manifest rows per read unit: one large manifest is read by many workers
MAX_IMAGE_BYTES = 64 * 1024 * 1024  # --max-image-bytes default
MAX_MANIFEST_LINE_BYTES = 64 * 1024 * 1024  # a longer jsonl line is a bad_manifest_row, read no further
SNIFF_BYTES = 64 * 1024  # enough of a file without an image extension to tell whether it is an image
READ_THREADS = 16  # images of one manifest read (fetched) at the same time
# images of one read unit checked (fully decoded, hashed) at the same time: Pillow's decoders and
# hashlib release the GIL, so one worker process decodes on more than one core
CHECK_THREADS = max(1, min(4, os.cpu_count() or 1))
UTF8_BOM = b"\xef\xbb\xbf"
UTF16_BOMS = (b"\xff\xfe", b"\xfe\xff")

HTTP_PROTOCOLS = ("http", "https")
FSSPEC_PROTOCOLS = ("memory", "gs", "gcs", "s3", "s3a", "az", "abfs", "abfss", "adl", "hdfs", "webhdfs", "hf")
USER_AGENT = f"finehard/{PROJECT_VERSION} (FineHARD curation; image fetch)"
HTTP_TIMEOUT_S = 20.0        # connect and each read
HTTP_TOTAL_TIMEOUT_S = 120.0  # one whole image download, retries included: a wall-clock deadline (_Deadline)
HTTP_STREAM_TIMEOUT_S = 3600.0  # one whole manifest or tar read over http(s), likewise
HTTP_RETRIES = 2             # more tries after the first, for timeouts, connection errors, 408/425/429/5xx
HTTP_BACKOFF_S = 0.5         # times the try number
HTTP_MAX_REDIRECTS = 5
HTTP_RETRY_STATUS = (408, 425, 429, 500, 502, 503, 504)
REDIRECT_STATUS = (301, 302, 303, 307, 308)


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
    # image, never items of their own (:func:`sidecars_of`)
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


def has_image_ext(uri: str) -> bool:
    return uri.lower().split("?")[0].endswith(IMAGE_SUFFIXES)


# ---------------------------------------------------------------------------------------------- opening


def _file_kind(mode: int) -> str:
    for test, name in ((stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return name
    return "not a regular file"


def _open_local(path: str) -> tuple[IO[bytes], int]:
    """A regular local file, opened literally, and its size; ``not_a_regular_file`` for anything else.

    ``O_NONBLOCK`` makes opening a FIFO return at once (it would wait for a writer); ``fstat`` on
    the opened descriptor then says what it is (a link to ``/dev/zero`` is a character device).
    """
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise SampleError("not_a_regular_file", f"{_file_kind(st.st_mode)}: {path}")
        os.set_blocking(fd, True)
        return os.fdopen(fd, "rb"), st.st_size
    except BaseException:
        os.close(fd)
        raise


def _fsspec_fs(proto: str) -> fsspec.AbstractFileSystem:
    try:
        return fsspec.filesystem(proto)
    except ImportError as e:
        raise SampleError("unsupported_scheme", f"{proto}:// needs a package that is not installed: {e}") from e
    except ValueError as e:
        raise SampleError("unsupported_scheme", f"{proto}://: {e}") from e


_NON_FILE_SCHEMES = ("data:", "javascript:", "mailto:", "blob:", "about:", "tel:")


def _check_scheme(uri: str, allowed: tuple[str, ...] = ()) -> Optional[str]:
    if uri.lower().startswith(_NON_FILE_SCHEMES):
        raise SampleError("unsupported_scheme", f"{uri.split(':', 1)[0].lower()}: URIs are not read: {uri[:100]}")
    proto = protocol_of(uri)
    if proto is None or proto in LOCAL_PROTOCOLS or proto in HTTP_PROTOCOLS:
        return proto
    if proto in FSSPEC_PROTOCOLS or proto in allowed:
        return proto
    raise SampleError("unsupported_scheme", f"{proto}:// is not read (local, http(s), "
                                            f"{', '.join(FSSPEC_PROTOCOLS)}): {uri[:200]}")


class _BoundedRedirects(urllib.request.HTTPRedirectHandler):
    """At most ``HTTP_MAX_REDIRECTS`` redirects, only to http(s): a redirect to ``file://``, ``ftp://``
    or any other scheme is ``unsafe_redirect`` (looked at before urllib's own check, which would
    answer a 302 error that reads as a redirect loop)."""
    max_redirections = HTTP_MAX_REDIRECTS

    def http_error_302(self, req, fp, code, msg, headers):  # noqa: ANN001 - urllib's signature
        target = headers.get("location") or headers.get("uri")
        if target:
            newurl = urllib.parse.urljoin(req.full_url, target)
            if protocol_of(newurl) not in HTTP_PROTOCOLS:
                fp.close()
                raise SampleError("unsafe_redirect", f"redirect from {req.full_url[:200]} to {newurl[:200]} "
                                                     "(only http(s) redirects are followed)")
        return super().http_error_302(req, fp, code, msg, headers)

    http_error_301 = http_error_303 = http_error_307 = http_error_308 = http_error_302

    def redirect_request(self, req, fp, code, msg, headers, newurl):  # noqa: ANN001 - urllib's signature
        if protocol_of(newurl) not in HTTP_PROTOCOLS:
            raise SampleError("unsafe_redirect", f"redirect from {req.full_url[:200]} to {newurl[:200]}")
        return super().redirect_request(req, fp, code, msg, headers, newurl)


def http_url(uri: str) -> str:
    """``uri`` as http.client accepts it: IDN host punycoded, spaces and non-ASCII percent-encoded
    (manifests scraped from the web hold both); ``%XX`` already there is kept."""
    parts = urllib.parse.urlsplit(uri)
    host = parts.hostname or ""
    if not host.isascii():
        netloc = parts.netloc.replace(host, host.encode("idna").decode("ascii"))
        parts = parts._replace(netloc=netloc)
    safe = "/:@!$&'()*+,;=%~-._"
    return urllib.parse.urlunsplit(parts._replace(
        path=urllib.parse.quote(parts.path, safe=safe, errors="surrogateescape"),
        query=urllib.parse.quote(parts.query, safe=safe + "?", errors="surrogateescape"), fragment=""))


class _Deadline:
    """A wall-clock limit on one whole transfer. When it passes, the sockets of the transfer are shut
    down, so a read blocked on a server that sends a byte now and then returns at once; ``expired``
    then turns whatever that read gave (an early end, an error) into ``http_timeout``."""

    def __init__(self, seconds: float, what: str):
        self.seconds, self.what, self.expired = seconds, what, False
        self._socks: list[socket.socket] = []
        self._lock = threading.Lock()
        self._timer = threading.Timer(seconds, self._expire)
        self._timer.daemon = True
        self._timer.start()

    def watch(self, sock: socket.socket) -> None:
        with self._lock:
            self._socks.append(sock)
            expired = self.expired
        if expired:
            _shut(sock)

    def _expire(self) -> None:
        with self._lock:
            self.expired = True
            socks = list(self._socks)
        for sock in socks:
            _shut(sock)

    def error(self) -> SampleError:
        return SampleError("http_timeout", f"{self.what} took over {self.seconds:g} s")

    def check(self) -> None:
        if self.expired:
            raise self.error()

    def cancel(self) -> None:
        self._timer.cancel()


def _shut(sock: socket.socket) -> None:
    try:  # the plain socket's shutdown (an SSL socket's own would drop its state under a reading thread)
        socket.socket.shutdown(sock, socket.SHUT_RDWR)
    except OSError:
        pass


def _watched(conn_class: type, deadline: _Deadline) -> type:
    class Watched(conn_class):  # type: ignore[misc, valid-type]
        def connect(self) -> None:
            super().connect()
            deadline.watch(self.sock)
    return Watched


class _DeadlineOpen:
    """Mixed into urllib's HTTP and HTTPS handlers: every connection they open is watched by ``deadline``."""

    def __init__(self, deadline: _Deadline):
        super().__init__()
        self.deadline = deadline

    def do_open(self, http_class, req, **kw):  # noqa: ANN001 - urllib's signature
        return super().do_open(_watched(http_class, self.deadline), req, **kw)


class _DeadlineHTTPHandler(_DeadlineOpen, urllib.request.HTTPHandler):
    pass


class _DeadlineHTTPSHandler(_DeadlineOpen, urllib.request.HTTPSHandler):
    pass


def _http_open(uri: str, timeout: float, deadline: _Deadline) -> http.client.HTTPResponse:
    """GET ``uri``; every connection it opens (redirects too) is shut when ``deadline`` passes."""
    opener = urllib.request.build_opener(  # per call: honours the proxy environment
        _BoundedRedirects, _DeadlineHTTPHandler(deadline), _DeadlineHTTPSHandler(deadline))
    return opener.open(urllib.request.Request(http_url(uri), headers={"User-Agent": USER_AGENT}), timeout=timeout)


def _http_failure(e: BaseException) -> tuple[SampleError, bool]:
    """The per-sample reason for a failed fetch and whether another try may help."""
    if isinstance(e, SampleError):  # too large, a redirect elsewhere, a download past the total time: final
        return e, False
    if isinstance(e, urllib.error.HTTPError):
        if e.code in REDIRECT_STATUS:
            return SampleError("too_many_redirects", f"more than {HTTP_MAX_REDIRECTS} redirects or a loop: {e}"), False
        return SampleError("http_error", f"HTTP {e.code} {e.reason}"), e.code in HTTP_RETRY_STATUS
    reason = getattr(e, "reason", e)
    if isinstance(reason, (socket.timeout, TimeoutError)) or isinstance(e, (socket.timeout, TimeoutError)):
        return SampleError("http_timeout", f"no answer within {HTTP_TIMEOUT_S:g} s"), True
    return SampleError("fetch_failed", f"{type(e).__name__}: {reason}"), True


def fetch_http(uri: str, limit: Optional[int]) -> bytes:
    """GET ``uri`` with timeouts, retries and a user agent, reading at most ``limit + 1`` bytes.

    ``HTTP_TOTAL_TIMEOUT_S`` is a deadline on the whole download, retries included: a server that
    sends a byte a second is cut off there (``http_timeout``), whatever the size."""
    deadline = _Deadline(HTTP_TOTAL_TIMEOUT_S, "the download")
    try:
        return _fetch_http(uri, limit, deadline)
    finally:
        deadline.cancel()


def _fetch_http(uri: str, limit: Optional[int], deadline: _Deadline) -> bytes:
    last: Optional[SampleError] = None
    for attempt in range(HTTP_RETRIES + 1):
        if attempt:
            time.sleep(HTTP_BACKOFF_S * attempt)
        try:
            deadline.check()
            with _http_open(uri, HTTP_TIMEOUT_S, deadline) as resp:
                length = resp.headers.get("Content-Length", "")
                if limit is not None and length.isdigit() and int(length) > limit:
                    raise SampleError("file_too_large", f"{length} bytes > --max-image-bytes {limit}")
                chunks, total = [], 0
                while True:
                    want = 1 << 16 if limit is None else min(1 << 16, limit + 1 - total)
                    chunk = resp.read(want)
                    deadline.check()  # a read the deadline cut short ends early: not the whole body
                    if not chunk:
                        return b"".join(chunks)
                    chunks.append(chunk)
                    total += len(chunk)
                    if limit is not None and total > limit:
                        raise SampleError("file_too_large", f"more than --max-image-bytes {limit} bytes")
        except (OSError, http.client.HTTPException, SampleError, ValueError) as e:
            last, retry = _http_failure(e) if not deadline.expired else (deadline.error(), False)
            if not retry:
                raise last from None
    assert last is not None
    raise last


def read_limited(uri: str, limit: Optional[int], allowed: tuple[str, ...] = ()) -> bytes:
    """The bytes at ``uri`` (see the module doc for how it is opened); ``file_too_large`` past ``limit``."""
    proto = _check_scheme(uri, allowed)
    if proto in HTTP_PROTOCOLS:
        return fetch_http(uri, limit)
    path = local_path(uri)
    if path is not None:
        f, size = _open_local(path)
        with f:
            if limit is not None and size > limit:
                raise SampleError("file_too_large", f"{size} bytes > --max-image-bytes {limit}")
            # as many bytes as fstat said, plus one to see a file that grew since; never a limit-sized buffer
            data = f.read(size + 1)
            if len(data) > size:
                data += f.read(-1 if limit is None else max(0, limit + 1 - len(data)))
    else:
        fs = _fsspec_fs(proto)
        with fs.open(fs._strip_protocol(uri), "rb") as f:
            data = f.read(-1 if limit is None else limit + 1)
    if limit is not None and len(data) > limit:
        raise SampleError("file_too_large", f"more than --max-image-bytes {limit} bytes")
    return data


@contextmanager
def open_input(uri: str) -> Iterator[IO[bytes]]:
    """A manifest or tar opened for reading as a stream (regular local files only; no URL chaining)."""
    proto = _check_scheme(uri, allowed=(protocol_of(uri) or "",))
    if proto in HTTP_PROTOCOLS:
        deadline = _Deadline(HTTP_STREAM_TIMEOUT_S, f"reading {uri[:200]}")
        try:
            try:
                resp = _http_open(uri, HTTP_TIMEOUT_S, deadline)
            except (OSError, http.client.HTTPException, ValueError) as e:
                raise (deadline.error() if deadline.expired else _http_failure(e)[0]) from None
            with resp:
                yield _TimedStream(resp, deadline)  # type: ignore[misc]
        finally:
            deadline.cancel()
        return
    path = local_path(uri)
    if path is not None:
        f, _ = _open_local(path)
        with f:
            yield f
        return
    fs = _fsspec_fs(proto)
    with fs.open(fs._strip_protocol(uri), "rb") as f:
        yield f


class _TimedStream:
    """An http response read under a :class:`_Deadline`: past it, or after ``HTTP_TIMEOUT_S`` without a
    byte, a read raises ``http_timeout`` (a tar or manifest cut short is never taken for its end)."""

    def __init__(self, resp: http.client.HTTPResponse, deadline: _Deadline):
        self.resp, self.deadline = resp, deadline

    def read(self, n: int = -1) -> bytes:
        try:
            data = self.resp.read(n)
        except (socket.timeout, TimeoutError):
            self.deadline.check()
            raise SampleError("http_timeout", f"no data within {HTTP_TIMEOUT_S:g} s") from None
        except (OSError, http.client.HTTPException):
            self.deadline.check()
            raise
        self.deadline.check()
        return data

    def seekable(self) -> bool:
        return False

    def readable(self) -> bool:
        return True

    def close(self) -> None:
        self.resp.close()


def _read_error(rec: dict[str, Any], e: BaseException) -> dict[str, Any]:
    if isinstance(e, SampleError):
        return mark_dead(rec, STAGE, e.reason, e.detail)
    return mark_dead(rec, STAGE, "unreadable", f"{type(e).__name__}: {e}")


def _read_into(rec: dict[str, Any], uri: str, limit: Optional[int], allowed: tuple[str, ...] = ()) -> dict[str, Any]:
    try:
        rec[Field.IMAGE_BYTES] = read_limited(uri, limit, allowed)
    except Exception as e:  # noqa: BLE001 - one unreadable image is that sample's reason, never the bundle's
        _read_error(rec, e)
        return rec
    _keep_source(rec, uri)
    return rec


def source_of(uri: str) -> Optional[str]:
    """How ``Field.SOURCE`` names ``uri`` so a later stage reads the same bytes again (``core.spill``):
    its local path, or the URI on an fsspec filesystem (``gs://``, ``s3://``, ``memory://``).

    None for http(s) (a second download costs as much as carrying the bytes, and may differ) and
    for a name with undecodable bytes (repaired later, so it would no longer name the file).
    """
    if not is_valid_text(uri) or protocol_of(uri) in HTTP_PROTOCOLS:
        return None
    path = local_path(uri)
    if path is None:
        return uri
    return path if local_path(path) == path else None  # "file://x://y" names "x://y", which reads as a URI


def _keep_source(rec: dict[str, Any], uri: str) -> None:
    """Note where the record's bytes (all of the file at ``uri``) can be read again."""
    source = source_of(uri)
    if source is not None:
        rec[Field.SOURCE] = source


# ---------------------------------------------------------------------------------------------- listing


def _input_fs(input_uri: str) -> tuple[fsspec.AbstractFileSystem, str]:
    """The filesystem and path of ``--input``: a local path literally (``::`` is part of the name)."""
    path = local_path(input_uri)
    if path is not None:
        fs = LocalFileSystem()
        return fs, fs._strip_protocol(path)
    return fsspec.core.url_to_fs(input_uri)


def _clashing(uris: list[str], root: str) -> tuple[str, ...]:
    """The files whose extension-less key another file of the input shares (``b.jpg`` and ``b.png``)."""
    stems = Counter(_relative_stem(u, root) for u in uris)
    return tuple(u for u in uris if stems[_relative_stem(u, root)] > 1)


def _sorted_local_files(folder: str, select: Callable[[str], bool],
                        sidecars: bool = False) -> Iterator[tuple[str, bool, bool, tuple[str, ...]]]:
    """``(path, selected, clashes, its sidecars)`` of every entry under the local ``folder`` that is not
    a folder, in the order of ``sorted(LocalFileSystem().find(folder))``, holding one folder's names at a time.

    What fsspec's ``find`` lists: links (not followed), FIFOs and the like are entries, a folder
    that cannot be listed is left out. Its order is that of the whole path strings; walking each
    folder in the order of its names, a sub-folder's name taken with its ``/``, gives the same
    (a folder's paths all start with ``name/``, and ``/`` sorts where it does in the full path).
    ``clashes``: another selected file of the same folder has the same name without extension
    (what :func:`_clashing` finds: such keys only meet within one folder). With ``sidecars`` (a
    folder of images) the caption files of an image (:data:`SIDECAR_EXTS`) come with it and are
    not entries of their own. The walk keeps its own stack of open folders, so any depth is
    listed (no recursion limit).
    """
    def entries_of(path: str) -> Iterator[tuple[str, str, bool, set[str], tuple[str, ...]]]:
        try:
            with os.scandir(path) as entries:
                names = [e.name + "/" if e.is_dir(follow_symlinks=False) else e.name for e in entries]
        except OSError:
            return
        names.sort()
        selected = bytearray(not n.endswith("/") and select(os.path.join(path, n)) for n in names)
        side = _sidecar_flags(names, selected) if sidecars else bytearray(len(names))
        any_side = any(side)
        clash = _repeated_stems(names, bytearray(c and not s for c, s in zip(selected, side)) if any_side
                                else selected)
        for i, (name, chosen) in enumerate(zip(names, selected)):
            if side[i]:
                continue
            own = (tuple(os.path.join(path, n) for n in _same_stem(names, name, side))
                   if any_side and chosen and has_image_ext(name) else ())
            yield path, name, bool(chosen), clash, own

    stack = [entries_of(folder)]
    while stack:
        entry = next(stack[-1], None)
        if entry is None:
            stack.pop()
            continue
        path, name, chosen, clash, own = entry
        if name.endswith("/"):
            stack.append(entries_of(os.path.join(path, name[:-1])))
        else:
            clashes = bool(chosen and clash) and os.path.splitext(name)[0] in clash
            yield os.path.join(path, name), chosen, clashes, own


SIDECAR_EXTS = (".txt", ".json")  # what a tar sample's members add to its image (short caption, url, our record)


def _same_stem(names: list[str], name: str, among: bytearray) -> Iterator[str]:
    """The other names of the sorted ``names`` flagged in ``among`` whose name without extension is
    ``name``'s; they all start with that stem and a dot, so they sit together in sorted order."""
    import bisect

    stem = os.path.splitext(name)[0]
    i = bisect.bisect_left(names, stem + ".")
    while i < len(names) and names[i].startswith(stem + "."):
        if among[i] and names[i] != name and os.path.splitext(names[i])[0] == stem:
            yield names[i]
        i += 1


def _sidecar_flags(names: list[str], selected: bytearray) -> bytearray:
    """1 for each of one folder's sorted ``names`` that is a sidecar: a ``.txt``/``.json`` file whose name
    without extension is that of a selected image of the folder (``0001.txt`` beside ``0001.jpg``)."""
    images = bytearray(bool(chosen) and has_image_ext(n) for n, chosen in zip(names, selected))
    flags = bytearray(len(names))
    for i, n in enumerate(names):
        if not n.endswith("/") and not images[i] and os.path.splitext(n)[1].lower() in SIDECAR_EXTS:
            flags[i] = any(True for _ in _same_stem(names, n, images))
    return flags


def sidecars_of(paths: Iterable[str]) -> dict[str, tuple[str, ...]]:
    """image path -> its sidecars, among ``paths`` (a whole listing: a glob's, a remote folder's)."""
    by_stem: dict[str, list[str]] = {}
    images: list[str] = []
    for p in sorted(paths):
        if has_image_ext(p):
            images.append(p)
        elif posixpath.splitext(p)[1].lower() in SIDECAR_EXTS:
            by_stem.setdefault(posixpath.splitext(p)[0], []).append(p)
    return {p: tuple(by_stem[posixpath.splitext(p)[0]]) for p in images if posixpath.splitext(p)[0] in by_stem}


def _repeated_stems(names: list[str], selected: bytearray) -> set[str]:
    """The names without extension that two or more selected ``names`` share, with 8 bytes per name
    held: their hashes first, then only the names whose hash repeats are compared as text."""
    import numpy as np

    def stems() -> Iterator[str]:
        return (os.path.splitext(n)[0] for n, chosen in zip(names, selected) if chosen)

    hashes = np.fromiter((hash(s) for s in stems()), dtype=np.int64)
    hashes.sort()
    repeated = set(hashes[1:][hashes[1:] == hashes[:-1]].tolist())
    if not repeated:
        return set()
    counts = Counter(s for s in stems() if hash(s) in repeated)
    return {s for s, n in counts.items() if n > 1}


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
    if protocol_of(input_uri) in HTTP_PROTOCOLS:  # URLs are not listed; {a,b} / {000..009} are expanded
        import braceexpand

        urls = list(braceexpand.braceexpand(input_uri)) if "{" in input_uri else [input_uri]
        kinds = {detect_kind(u) for u in urls}
        if len(kinds) > 1:
            raise InputError(f"--input {input_uri} mixes {sorted(kinds)}; point it at one kind of input")
        yield from (ReadUnit(detect_kind(u), u.rsplit("/", 1)[0], (u,)) for u in urls)
        return
    fs, path = _input_fs(input_uri)
    prefix = protocol_prefix(fs)
    skipped: list[str] = []
    side: dict[str, tuple[str, ...]] = {}  # image -> its sidecars (globs and remote folders)
    has_glob = any(ch in path for ch in "*?[{")
    if has_glob and not fs.exists(path):
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
        matched = _without_sidecars(matched, side)
    elif fs.isdir(path) and fs.exists(posixpath.join(path, "summary.json")) and fs.glob(posixpath.join(path, "shard-*.tar")):
        matched, root = sorted(fs.glob(posixpath.join(path, "shard-*.tar"))), path  # our own output: its shards
    elif fs.isdir(path) and isinstance(fs, LocalFileSystem):
        yield from _local_folder_units(input_uri, path, files_per_unit)
        return
    elif fs.isdir(path):
        found = sorted(fs.find(path))
        root = path
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


def _glob_sidecars(fs: fsspec.AbstractFileSystem, matched: list[str]) -> dict[str, tuple[str, ...]]:
    """The sidecars of a glob's images: matched too (``dir/*``) or only beside them (``dir/*.jpg``)."""
    matched_images = [p for p in matched if has_image_ext(p)]
    near = set(matched)
    for folder in sorted({posixpath.dirname(p) for p in matched_images}):
        try:
            near.update(p for p in fs.ls(folder, detail=False) if posixpath.splitext(p)[1].lower() in SIDECAR_EXTS)
        except OSError:
            continue
    found = sidecars_of(near)
    return {p: found[p] for p in matched_images if p in found}


def _without_sidecars(paths: list[str], side: dict[str, tuple[str, ...]]) -> list[str]:
    taken = {s for sc in side.values() for s in sc}
    return [p for p in paths if p not in taken]


def _relative_name(uri: str, root: str) -> str:
    return uri[len(root):].lstrip("/") if root and uri.startswith(root) else uri.rsplit("/", 1)[-1]


def _relative_stem(uri: str, root: str) -> str:
    return os.path.splitext(_relative_name(uri, root))[0]


def new_record(key: str, f_path: str, short_caption: str = "", key_source: Optional[str] = None,
               **extra: Any) -> dict[str, Any]:
    rec = {"key": key, "f_path": f_path, "short_caption": short_caption or "", **extra}
    if key_source is not None and not is_valid_text(key_source):
        bump(rec, "unicode_repaired")
    return rec


def valid_record(rec: dict[str, Any]) -> dict[str, Any]:
    """Every text of the record made valid UTF-8 (lone surrogates), counted as ``unicode_repaired``.

    Shards are written with ``ensure_ascii=False``: a lone surrogate would fail the write. Paths
    and URLs keep the undecodable bytes visible (``\\xff``); other text gets U+FFFD.
    """
    for field in list(rec):
        if field == Field.IMAGE_BYTES:
            continue
        value, n = _valid_value(rec[field], escape=field in ("f_path", "source_url"))
        if n:
            rec[field] = value
            bump(rec, "unicode_repaired", n)
    return rec


def _valid_value(value: Any, escape: bool) -> tuple[Any, int]:
    if isinstance(value, str):
        return (value, 0) if is_valid_text(value) else (valid_text(value, escape), 1)
    if isinstance(value, dict):
        n, out = 0, {}
        for k, v in value.items():
            k2, a = _valid_value(k, escape) if isinstance(k, str) else (k, 0)
            v2, b = _valid_value(v, escape)
            out[k2], n = v2, n + a + b
        return (out, n) if n else (value, 0)
    if isinstance(value, (list, tuple)):
        items = [_valid_value(v, escape) for v in value]
        n = sum(b for _, b in items)
        return ([v for v, _ in items], n) if n else (value, 0)
    return value, 0


# ---------------------------------------------------------------------------------------------- folders


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
    """Files of a folder input that are not read (see :func:`list_units`), each as a filtered record."""
    for uri in unit.uris:
        name = _relative_name(uri, unit.root)
        rec = new_record(make_key(name, f"skipped:{name}"), uri, key_source=name)
        if detect_kind(uri) == "files":
            why = "not a manifest or tar, in a folder of manifests or tars"
        else:
            why = f"a {detect_kind(uri)} inside a folder of images is not read; give it as --input to read it"
        yield mark_filtered(rec, STAGE, "skipped_file", why)


# ---------------------------------------------------------------------------------------------- manifests


def _lines(f: IO[bytes], limit: int) -> Iterator[tuple[bytes, bool]]:
    """``(line, too_long)`` per ``\\n``-separated line, holding at most ``limit`` bytes of one line.

    Only ``\\n`` ends a line (``str.splitlines`` would also split at U+2028 inside a caption), and a
    line longer than ``limit`` (a link to ``/dev/zero``, a broken file) is skipped, not kept.
    """
    buf, scan, skipping = bytearray(), 0, False
    while True:
        chunk = f.read(1 << 20)
        if not chunk:
            if buf and not skipping:
                yield bytes(buf), False
            return
        buf += chunk
        while True:
            nl = buf.find(b"\n", scan)
            if nl < 0:
                scan = len(buf)
                if len(buf) > limit:
                    if not skipping:
                        yield b"", True
                    skipping, scan = True, 0
                    del buf[:]
                break
            line = bytes(buf[:nl + 1])
            del buf[:nl + 1]
            scan = 0
            if skipping:
                skipping = False
                continue
            yield (b"", True) if len(line) > limit + 1 else (line, False)


class _Prefixed:
    """``prefix`` then the rest of ``f``: a stream whose first bytes were already read."""

    def __init__(self, prefix: bytes, f: IO[bytes]):
        self.prefix, self.f = prefix, f

    def read(self, n: int = -1) -> bytes:
        if not self.prefix:
            return self.f.read(n)
        if n is None or n < 0:
            out, self.prefix = self.prefix + self.f.read(), b""
            return out
        out, self.prefix = self.prefix[:n], self.prefix[n:]
        return out + (self.f.read(n - len(out)) if len(out) < n else b"")


def _decode(data: bytes) -> tuple[str, bool]:
    """UTF-8 text; undecodable bytes kept as lone surrogates (made valid later). Second: it was invalid."""
    try:
        return data.decode("utf-8"), False
    except UnicodeDecodeError:
        return data.decode("utf-8", "surrogateescape"), True


def _not_object(row: Any) -> str:
    return f"a JSON {type(row).__name__ if row is not None else 'null'}, not an object"


def _is_parquet(uri: str) -> bool:
    return uri.lower().split("?")[0].endswith(".parquet")


def _is_jsonl(uri: str) -> bool:
    return uri.lower().split("?")[0].endswith(".jsonl")


class _Span:
    """At most ``size`` bytes of ``f`` (a part of a manifest that starts at a line start)."""

    def __init__(self, f: IO[bytes], size: int):
        self.f, self.left = f, size

    def read(self, n: int = -1) -> bytes:
        want = self.left if n is None or n < 0 else min(n, self.left)
        data = self.f.read(want) if want > 0 else b""
        self.left -= len(data)
        return data


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
            import pyarrow.parquet as pq

            with open_input(uri) as f:
                meta = pq.ParquetFile(f if f.seekable() else io.BytesIO(f.read())).metadata
            start_group, rows, first = 0, 0, 0
            for g in range(meta.num_row_groups):
                rows += meta.row_group(g).num_rows
                if rows >= rows_per_unit or g == meta.num_row_groups - 1:
                    parts.append(((start_group, g + 1), first))
                    start_group, first, rows = g + 1, first + rows, 0
        elif _is_jsonl(uri):
            with open_input(uri) as f:
                if f.read(2) in UTF16_BOMS:
                    parts = []
                else:
                    f.seek(0)
                    pos = start = first = rows = 0
                    for line, _ in _lines(f, MAX_MANIFEST_LINE_BYTES):
                        body = line[len(UTF8_BOM):] if pos == 0 and line.startswith(UTF8_BOM) else line
                        pos += len(line)
                        if _decode(body)[0].strip():  # the reader's own test of a blank line
                            rows += 1
                        if rows >= rows_per_unit:
                            parts.append(((start, pos), first))
                            start, first, rows = pos, first + rows, 0
                    if pos > start:
                        parts.append(((start, pos), first))
    except Exception:  # noqa: BLE001 - read whole; the reader dead-letters what is wrong with it
        parts = []
    if len(parts) <= 1:
        yield unit
        return
    for span, first in parts:
        yield dataclasses.replace(unit, span=span, first_row=first)


def _manifest_rows(uri: str, span: tuple[int, ...] = ()) -> Iterator[tuple[str, Any]]:
    """``(where, row)`` per manifest row; ``row`` is the parsed value (any JSON type) or an Exception.

    ``span``: only that part of the manifest (see :func:`split_unit`).
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


def is_finehard_record(meta: dict[str, Any]) -> bool:
    """True for the ``.json`` member of a shard this pipeline wrote (it has provenance and regions)."""
    return isinstance(meta.get("provenance"), dict) and "bbox_info" in meta and "f_path" in meta


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and v == v and abs(v) != float("inf")


def shard_record_problem(meta: dict[str, Any]) -> Optional[str]:
    """What is wrong with the record of one of our own shards (tampered, or from a broken writer), or None.

    Its fields are carried into the new shard (captions, regions, provenance), so they must have
    the types every later stage and the training loader expect.
    """
    for f in ("key", "f_path", "short_caption", "caption"):
        if f in meta and not isinstance(meta[f], str):
            return f"{f} is a {type(meta[f]).__name__}, not a string"
    regions = meta.get("bbox_info")
    if not isinstance(regions, list):
        return f"bbox_info is a {type(regions).__name__}, not a list"
    for i, r in enumerate(regions):
        if not isinstance(r, dict):
            return f"bbox_info[{i}] is a {type(r).__name__}, not an object"
        missing = [f for f in REGION_FIELDS if f not in r]
        if missing:
            return f"bbox_info[{i}] lacks {missing}"
        b = r["bbox"]
        if not (isinstance(b, list) and len(b) == 5 and all(_number(v) for v in b)
                and 0 <= b[0] < b[2] <= 1 and 0 <= b[1] < b[3] <= 1):
            return f"bbox_info[{i}].bbox is not normalised [x1, y1, x2, y2, score]: {str(b)[:100]}"
        if not isinstance(r["short_expr"], str) or not isinstance(r["long_expr"], str):
            return f"bbox_info[{i}] expressions are not strings"
        if r["flag_short_neg"] not in (0, 1) or isinstance(r["flag_short_neg"], bool):
            return f"bbox_info[{i}].flag_short_neg is {str(r['flag_short_neg'])[:50]}, not 0 or 1"
        negs = r["short_expr_negs"]
        if not isinstance(negs, dict) or not all(isinstance(v, str) for v in negs.values()):
            return f"bbox_info[{i}].short_expr_negs is not an object of strings"
        if r["flag_short_neg"] == 1 and len(negs) != NUM_NEGATIVES:
            return f"bbox_info[{i}] has flag_short_neg 1 and {len(negs)} negatives, not {NUM_NEGATIVES}"
    for name, block in meta["provenance"].items():
        if name != "version" and not isinstance(block, dict):
            return f"provenance.{name} is a {type(block).__name__}, not an object"
    return None


TAR_IMAGE_EXTS = ("jpg", "jpeg", "png", "webp") + tuple(e for e in IMAGE_EXTS if e not in ("jpg", "jpeg", "png", "webp"))


@dataclass
class _Member:
    name: str            # full member name
    data: Optional[bytes]  # None: larger than the byte limit, not read
    size: int
    offset: Optional[int] = None  # where its bytes start in the tar file, when the tar can be range-read


def _records_from_tar(unit: ReadUnit, max_bytes: int = MAX_IMAGE_BYTES,
                      want: Optional[Callable[[str], bool]] = None) -> Iterator[dict[str, Any]]:
    """img2dataset layout: ``<key>.jpg`` + optional ``<key>.txt`` and ``<key>.json``, grouped by key.

    A sample is the run of consecutive members with the same full path stem (``dirA/000001`` and
    ``dirB/000001`` are two samples; a file name's leading dots belong to its stem, so ``.x.jpg``
    is sample ``.x``, key ``x_<hash>``). Its key is the stem's file name as before (``000001``); when
    an earlier sample of this tar has that key, the whole stem (``dirB_000001_<hash>``), then the
    stem and its position. Of two images in one sample (``000002.jpg`` and ``000002.png``) the first
    of ``TAR_IMAGE_EXTS`` is the sample and each other one is dead-lettered as
    ``duplicate_image_member``; so is an image that comes back later in the tar, after other samples.
    Other members that come back later (a ``000001.txt`` far from ``000001.jpg``) are ``split_sample``:
    a tar is read as a stream, so the members of a sample must be next to each other.
    A member over the byte limit is not read (``file_too_large``).

    Returns (as the generator's value) how many items the tar held, counted from its members as
    they stream by, apart from the grouping: each run of members with one stem, each further
    image of a run, each unsafe member, and a tar that could not be read to its end. The reader
    must have yielded exactly that many records (:func:`read_and_count` writes this count).
    A tar is a stream: every member is read whatever ``want`` says (a sample's key may come from
    its ``.json``); :func:`read_and_count` drops the others' records before they are decoded.
    The image of an uncompressed tar on a local or fsspec filesystem keeps ``Field.SOURCE =
    (tar, offset, size)``: later stages read it back with one range read.
    """
    uri = unit.uris[0]
    where: Optional[str] = None  # Field.SOURCE's name for this tar, when its members can be range-read
    used: set[str] = set()
    seen: set[str] = set()
    seen_with_image: set[str] = set()
    groups = 0
    held = 0  # items the tar holds, counted from its members (see above), not from what flush() yields

    def key_for(stem: str) -> str:
        base = stem.rsplit("/", 1)[-1]
        key = make_key(base)
        if key in used:
            key = make_key(stem)
        if key in used:
            key = make_key(stem, f"{stem}#{groups}")
        used.add(key)
        return key

    def flush(stem: Optional[str], members: dict[str, _Member]) -> Iterator[dict[str, Any]]:
        nonlocal groups
        if stem is None:
            return
        groups += 1
        key = key_for(stem)
        images = [e for e in TAR_IMAGE_EXTS if e in members]
        if stem in seen_with_image and images:  # 1.jpg, 2.jpg, 1.png: a second image for sample 1
            for ext in images:
                m = members[ext]
                extra = new_record(make_key(f"{stem}.{ext}", f"{uri}#{m.name}#{groups}"), f"{uri}#{m.name}",
                                   key_source=stem)
                yield mark_dead(extra, STAGE, "duplicate_image_member",
                                f"{m.name}: sample {stem} already had an image earlier in the tar")
            return
        if stem in seen:  # 1.jpg, 2.jpg, 1.txt: the rest of sample 1 comes after another sample
            names = sorted(m.name for m in members.values())
            for m in [members[e] for e in images] or [None]:
                name = m.name if m is not None else names[0]
                split = new_record(make_key(f"{stem}.split", f"{uri}#{name}#{groups}"), f"{uri}#{name}",
                                   key_source=stem)
                yield mark_dead(split, STAGE, "split_sample",
                                f"{names}: sample {stem} began earlier in the tar, not next to these members "
                                "(a tar is read as a stream: put each sample's members together, e.g. "
                                "tar --sort=name)")
            return
        seen.add(stem)
        if images:
            seen_with_image.add(stem)
        for ext in images[1:]:
            m = members[ext]
            extra = new_record(make_key(f"{stem}.{ext}", f"{uri}#{m.name}"), f"{uri}#{m.name}", key_source=stem)
            yield mark_dead(extra, STAGE, "duplicate_image_member",
                            f"{m.name}: sample {stem} already has {members[images[0]].name}")
        rec = new_record(key, f"{uri}#{stem}", key_source=stem)
        too_large = [m for m in members.values() if m.data is None]
        if too_large:
            yield mark_dead(rec, STAGE, "file_too_large", f"{too_large[0].name}: {too_large[0].size} bytes > "
                                                          f"--max-image-bytes {max_bytes}")
            return
        meta: dict[str, Any] = {}
        if "json" in members:
            try:
                meta = json.loads(members["json"].data)
            except (ValueError, RecursionError) as e:
                yield mark_dead(rec, STAGE, "bad_member_json", f"{members['json'].name}: not JSON: {e}")
                return
            if not isinstance(meta, dict):
                yield mark_dead(rec, STAGE, "bad_member_json", f"{members['json'].name}: {_not_object(meta)}")
                return
        if is_finehard_record(meta):
            # One of our own shards: keep the record's identity and every field it carries.
            problem = shard_record_problem(meta)
            if problem:
                yield mark_dead(rec, STAGE, "bad_shard_record", f"{members['json'].name}: {problem}")
                return
            rec = new_record(make_key(str(meta.get("key") or stem.rsplit("/", 1)[-1])),
                             str(meta.get("f_path") or f"{uri}#{stem}"), str(meta.get("short_caption") or ""))
            rec[Field.INPUT_RECORD] = {f: meta[f] for f in ("caption", "bbox_info", "provenance") if f in meta}
            if meta.get("caption"):
                rec[Field.INPUT_CAPTION] = str(meta["caption"])
        else:
            txt = members["txt"].data.decode("utf-8-sig", "replace") if "txt" in members else ""
            caption = meta.get("caption")
            rec["short_caption"] = txt or (caption if isinstance(caption, str) else "")
        if not images:
            yield mark_dead(rec, STAGE, "no_image_member", f"members: {sorted(m.name for m in members.values())}")
            return
        image = members[images[0]]
        rec[Field.IMAGE_BYTES] = image.data
        if image.offset is not None:
            rec[Field.SOURCE] = (where, image.offset, image.size)
        if meta.get("url"):
            rec["source_url"] = str(meta["url"])
        yield rec

    current: Optional[str] = None
    members: dict[str, _Member] = {}
    try:
        with open_input(uri) as f, tarfile.open(fileobj=f, mode="r|*") as tar:
            if getattr(tar.fileobj, "comptype", None) == "tar":  # offsets in a .tar.gz are in the unzipped stream
                where = source_of(uri)
            for ti in tar:
                if ti.isdir():
                    continue
                problem = unsafe_member_problem(ti)
                if problem:
                    held += 1
                    rec = new_record(make_key(ti.name.rsplit("/", 1)[-1].partition(".")[0] or "member", ti.name),
                                     f"{uri}#{ti.name}")
                    yield mark_dead(rec, STAGE, "unsafe_tar_member", f"{problem}: {ti.name!r}")
                    continue
                member_name = ti.name
                while member_name.startswith("./"):  # "./000001.jpg" is "000001.jpg" (tar -C dir .)
                    member_name = member_name[2:]
                folder, _, name = member_name.rpartition("/")
                dots = len(name) - len(name.lstrip("."))  # ".x.jpg" is sample ".x", never an empty stem
                base, _, ext = name[dots:].partition(".")
                base = name[:dots] + base
                stem = f"{folder}/{base}" if folder else base
                ext = ext.lower()
                if stem != current:
                    held += 1
                    yield from flush(current, members)
                    current, members = stem, {}
                elif ext in TAR_IMAGE_EXTS and any(e in members for e in TAR_IMAGE_EXTS):
                    held += 1  # a second image of this sample: dead-lettered, one item more
                data = tar.extractfile(ti).read(max_bytes + 1) if ti.size <= max_bytes else None
                offset = ti.offset_data if where is not None and not ti.issparse() else None  # sparse: not contiguous
                member = _Member(ti.name, data, ti.size, offset)
                if ext in members:  # 000001.JPG next to 000001.jpg: never overwrite one with the other
                    if ext in TAR_IMAGE_EXTS:
                        rec = new_record(make_key(f"{stem}.{ext}", f"{uri}#{ti.name}"), f"{uri}#{ti.name}",
                                         key_source=stem)
                        yield mark_dead(rec, STAGE, "duplicate_image_member",
                                        f"{ti.name}: sample {stem} already has {members[ext].name}")
                    continue
                members[ext] = member
    except (OSError, tarfile.TarError, EOFError, SampleError, ValueError) as e:
        held += 1
        rec = new_record(make_key(posixpath.basename(uri) + Field.TAR_ERROR), uri)
        reason = e.reason if isinstance(e, SampleError) else "unreadable_tar"
        yield mark_dead(rec, STAGE, reason, e.detail if isinstance(e, SampleError) else f"{type(e).__name__}: {e}")
    yield from flush(current, members)
    return held


READERS: dict[str, Callable[..., Iterator[dict[str, Any]]]] = {
    "files": _records_from_files, "manifest": _records_from_manifest, "tar": _records_from_tar,
    "skipped": _records_skipped}


def read_unit(unit: ReadUnit, max_image_bytes: int = MAX_IMAGE_BYTES,
              want: Optional[Callable[[str], bool]] = None) -> Iterator[dict[str, Any]]:
    """Every record of ``unit``, with valid text. A reader that fails (a bug) ends the unit with one
    dead record (``unreadable_input``) instead of failing the bundle. Records whose key ``want``
    refuses come out too, but their images may not have been read (see :func:`read_and_count`).

    Returns (as the generator's value) the items the reader counted apart from its records (a
    tar's members, :func:`_records_from_tar`), or None when the records are the count."""
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


class ReadImages(beam.PTransform):
    """``input_uri`` -> records ``{key, f_path, short_caption, image_bytes, width, height, ext}``.

    ``want`` (picklable; ``transforms.write.ShardRange`` for a wave of a local run) keeps only the
    records whose key it accepts; the others are counted, and not read where the reader can skip them.
    """

    def __init__(self, input_uri: str, max_pixels: int = 64_000_000, min_side: int = 8,
                 max_short_caption_chars: int = MAX_SHORT_CAPTION_CHARS, max_image_bytes: int = MAX_IMAGE_BYTES,
                 counts_root: Optional[str] = None, rows_per_unit: int = ROWS_PER_UNIT, near_hashes: bool = False,
                 want: Optional[Callable[[str], bool]] = None):
        super().__init__()
        self.want = want
        self.near_hashes = near_hashes
        self.rows_per_unit = rows_per_unit
        self.input_uri = input_uri
        self.max_pixels = max_pixels
        self.min_side = min_side
        self.max_short_caption_chars = max_short_caption_chars
        self.max_image_bytes = max_image_bytes
        self.counts_root = counts_root

    def expand(self, pbegin: beam.pvalue.PBegin) -> beam.PCollection:
        max_pixels, min_side, max_alt = self.max_pixels, self.min_side, self.max_short_caption_chars
        # The input goes in as an argument (pickled), not as an element: Beam's str coder cannot
        # carry a path whose undecodable bytes Python keeps as lone surrogates.
        return (pbegin
                | "Input" >> beam.Create([None])
                | "ListUnits" >> beam.FlatMap(lambda _, uri: list_units(uri), uri=self.input_uri)
                | "SpreadUnits" >> beam.Reshuffle()
                | "SplitManifests" >> beam.FlatMap(split_unit, rows_per_unit=self.rows_per_unit)
                | "SpreadParts" >> beam.Reshuffle()  # the parts of one manifest go to different workers
                # each image checked (decoded once) right after it is read, in a thread pool (checked())
                | "ReadUnit" >> beam.FlatMap(read_and_check, functools.partial(
                    check_image, max_pixels=max_pixels, min_side=min_side, max_short_caption_chars=max_alt,
                    near_hashes=self.near_hashes), max_image_bytes=self.max_image_bytes, counts_root=self.counts_root,
                    want=self.want))
