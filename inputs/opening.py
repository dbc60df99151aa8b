"""Opening an input's bytes: a local path, http(s), or an fsspec filesystem.

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

import http.client
import os
import socket
import stat
import time
import urllib.error
import urllib.parse
import urllib.request
from contextlib import contextmanager
from typing import IO, Iterator, Optional

import fsspec

from core.files import LOCAL_PROTOCOLS, local_path, protocol_of
from core.record import PROJECT_VERSION, SampleError, is_valid_text
from inputs.http import (HTTP_MAX_REDIRECTS, HTTP_PROTOCOLS, _BoundedRedirects, _Deadline, _DeadlineHTTPHandler,
                         _DeadlineHTTPSHandler)

FSSPEC_PROTOCOLS = ("memory", "gs", "gcs", "s3", "s3a", "az", "abfs", "abfss", "adl", "hdfs", "webhdfs", "hf")
USER_AGENT = f"finehard/{PROJECT_VERSION} (FineHARD curation; image fetch)"
HTTP_TIMEOUT_S = 20.0        # connect and each read
HTTP_TOTAL_TIMEOUT_S = 120.0  # one whole image download, retries included: a wall-clock deadline (_Deadline)
HTTP_STREAM_TIMEOUT_S = 3600.0  # one whole manifest or tar read over http(s), likewise
HTTP_RETRIES = 2             # more tries after the first, for timeouts, connection errors, 408/425/429/5xx
HTTP_BACKOFF_S = 0.5         # times the try number
HTTP_RETRY_STATUS = (408, 425, 429, 500, 502, 503, 504)
REDIRECT_STATUS = (301, 302, 303, 307, 308)


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
