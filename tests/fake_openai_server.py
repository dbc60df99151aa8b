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


class FakeOpenAIServer:
    """Context manager serving ``POST /v1/chat/completions`` with ``reply``; ``url`` is its base URL."""

    def __init__(self, reply: Reply, models: Optional[Callable[[], tuple[int, Any]]] = None, port: int = 0):
        self.reply = reply
        self.models = models  # GET /v1/models (readiness); None: 404 like a server without that route
        self.gets = 0
        self.requests: list[dict[str, Any]] = []
        self.headers: list[dict[str, str]] = []
        self._lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:  # noqa: N802
                with server._lock:
                    server.gets += 1
                self._answer(*(server.models() if server.models else (404, {"error": "not found"})))

            def do_POST(self) -> None:  # noqa: N802
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
                with server._lock:
                    server.requests.append(body)
                    server.headers.append(dict(self.headers))
                self._answer(*server.reply(body))

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

        self.httpd = ThreadingHTTPServer(("127.0.0.1", port), Handler)
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
