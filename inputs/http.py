"""The guards of an http(s) transfer, for :mod:`inputs.opening`: at most ``HTTP_MAX_REDIRECTS`` redirects, only
to http(s), and a wall-clock deadline on one whole transfer that shuts its sockets when it passes."""
from __future__ import annotations

import socket
import threading
import urllib.parse
import urllib.request

from core.files import protocol_of
from core.record import SampleError

HTTP_PROTOCOLS = ("http", "https")
HTTP_MAX_REDIRECTS = 5


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
