"""A scripted OpenAI-compatible server on 127.0.0.1 for tests: records requests, answers as told."""
from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable, Optional

# A reply gets the request body and returns (HTTP status, JSON-able payload or raw str[, headers]).
Reply = Callable[[dict[str, Any]], tuple[int, Any]]


def completion(content: Any, finish_reason: str = "stop") -> dict[str, Any]:
    """A chat.completion body whose first choice says ``content``."""
    return {"id": "fake", "object": "chat.completion",
            "choices": [{"index": 0, "finish_reason": finish_reason,
                         "message": {"role": "assistant", "content": content}}]}


class _Backlogged(ThreadingHTTPServer):
    request_queue_size = 1024  # as a real server's listen backlog: hundreds of clients may connect at once


class FakeOpenAIServer:
    """Context manager serving ``POST /v1/chat/completions`` with ``reply``; ``url`` is its base URL."""

    def __init__(self, reply: Reply, models: Optional[Callable[[], tuple[int, Any]]] = None, port: int = 0,
                 metrics: Optional[Callable[[], str]] = None):
        self.reply = reply
        self.models = models  # GET /v1/models (readiness); None: 404 like a server without that route
        self.metrics = metrics  # GET /metrics: a Prometheus page, as vLLM's; None: 404
        self.gets = 0  # GETs of anything but /metrics
        self.metrics_gets = 0
        self.requests: list[dict[str, Any]] = []
        self.headers: list[dict[str, str]] = []
        self.in_flight = 0  # chat requests received and not yet answered
        self.max_in_flight = 0
        self._lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:  # noqa: N802
                if self.path.rstrip("/").endswith("/metrics"):
                    with server._lock:
                        server.metrics_gets += 1
                    self._answer(*((200, server.metrics()) if server.metrics else (404, {"error": "not found"})))
                    return
                with server._lock:
                    server.gets += 1
                self._answer(*(server.models() if server.models else (404, {"error": "not found"})))

            def do_POST(self) -> None:  # noqa: N802
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
                with server._lock:
                    server.requests.append(body)
                    server.headers.append(dict(self.headers))
                    server.in_flight += 1
                    server.max_in_flight = max(server.max_in_flight, server.in_flight)
                try:
                    answer = server.reply(body)
                finally:
                    with server._lock:
                        server.in_flight -= 1
                self._answer(*answer)

            def _answer(self, status: int, payload: Any, headers: Optional[dict[str, str]] = None) -> None:
                data = payload.encode() if isinstance(payload, str) else json.dumps(payload).encode()
                try:
                    self.send_response(status)
                    for k, v in (headers or {}).items():
                        self.send_header(k, v)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass

        self.httpd = _Backlogged(("127.0.0.1", port), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        self._thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> "FakeOpenAIServer":
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def scripted(*replies: tuple[int, Any]) -> Reply:
    """Answer with ``replies`` in turn, the last one for every later request."""
    queue = list(replies)
    lock = threading.Lock()

    def reply(_: dict[str, Any]) -> tuple[int, Any]:
        with lock:
            return queue.pop(0) if len(queue) > 1 else queue[0]
    return reply


def slow(seconds: float, then: Optional[tuple[int, Any]] = None) -> Reply:
    """Sleep ``seconds`` before answering (to trip a client's timeout)."""
    def reply(_: dict[str, Any]) -> tuple[int, Any]:
        time.sleep(seconds)
        return then or (200, completion("late"))
    return reply


class FullBatches:
    """A reply that keeps a server's ``slots`` full before answering: its oldest request is answered
    only while ``slots`` requests are open, as a batch server that waits for a full batch would.

    When no new request arrives for ``grace`` seconds it answers anyway and counts a ``stall``: a
    client that keeps ``slots`` requests in flight stalls only at the end of its input (fewer
    than ``slots`` left), one that waits for a whole batch stalls at every batch boundary.
    """

    def __init__(self, slots: int, answer: Reply, grace: float = 1.0):
        self.slots, self.answer, self.grace = slots, answer, grace
        self.stalls = 0
        self._open: list[object] = []
        self._last_arrival = time.monotonic()
        self._cond = threading.Condition()

    def __call__(self, body: dict[str, Any]) -> tuple[int, Any]:
        ticket = object()
        with self._cond:
            self._open.append(ticket)
            self._last_arrival = time.monotonic()
            self._cond.notify_all()
            while True:
                if self._open[0] is ticket:
                    if len(self._open) >= self.slots:
                        break
                    if time.monotonic() - self._last_arrival >= self.grace:
                        self.stalls += 1
                        break
                self._cond.wait(timeout=0.02)
            self._open.pop(0)
            self._cond.notify_all()
        return self.answer(body)


class Slots:
    """A reply that serves like a batch server with ``slots`` slots: first come, first served, each
    request ``seconds`` long once it has a slot; the rest wait their turn (so the wait shows in the
    answer latency, as in vLLM's queue). ``most`` is the most requests it ever held at once;
    :meth:`metrics` is its queue as vLLM's ``/metrics`` page says it."""

    def __init__(self, slots: int, seconds: float, answer: Reply):
        self.slots, self.seconds, self.answer = slots, seconds, answer
        self.most = 0
        self._queue: list[object] = []
        self._busy = 0
        self._cond = threading.Condition()

    def __call__(self, body: dict[str, Any]) -> tuple[int, Any]:
        ticket = object()
        with self._cond:
            self._queue.append(ticket)
            self.most = max(self.most, len(self._queue) + self._busy)
            while self._queue[0] is not ticket or self._busy >= self.slots:
                self._cond.wait()
            self._queue.pop(0)
            self._busy += 1
            self._cond.notify_all()
        try:
            time.sleep(self.seconds)
            return self.answer(body)
        finally:
            with self._cond:
                self._busy -= 1
                self._cond.notify_all()

    def metrics(self) -> str:
        with self._cond:
            running, waiting = self._busy, len(self._queue)
        return ("# TYPE vllm:num_requests_running gauge\n"
                f'vllm:num_requests_running{{model_name="m",engine="0"}} {float(running)}\n'
                "# TYPE vllm:num_requests_waiting gauge\n"
                f'vllm:num_requests_waiting{{model_name="m",engine="0"}} {float(waiting)}\n')
