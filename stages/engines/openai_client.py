"""A small client for OpenAI-compatible servers (vLLM serve, llama.cpp server, LMDeploy ...).

On ``httpx`` (pooled keep-alive connections, separate connect/read timeouts). Timeouts on every request, bounded retries with jittered backoff (and the
server's ``Retry-After``) on connection errors, timeouts, 408/429 and 5xx, a wait for the server's
readiness before the first batch (:meth:`OpenAIClient.wait_ready`), a thread pool for concurrent requests. The API key comes only
from an environment variable (``FINEHARD_OPENAI_API_KEY``, else ``OPENAI_API_KEY``) and is never
logged, printed or put in an error message.
"""
from __future__ import annotations

import json
import logging
import os
import random
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, Callable, Iterable, Optional, Sequence, TypeVar

if TYPE_CHECKING:
    import httpx

LOG = logging.getLogger("transforms.engines.openai_client")  # the name these lines always had
API_KEY_ENV_VARS = ("FINEHARD_OPENAI_API_KEY", "OPENAI_API_KEY")
RETRY_STATUS = frozenset({408, 429, 500, 502, 503, 504})
NOT_READY_STATUS = frozenset({502, 503, 504})  # a proxy or a server still loading its model
OVERLOAD_STATUS = frozenset({429, 503})  # the server asks for fewer requests: the adaptive window backs off
DEFAULT_CONCURRENCY = 8  # requests in flight of ``map`` when no concurrency is set
WARMUP_ENV = "FINEHARD_SERVER_WARMUP_S"
DEFAULT_WARMUP_S = 600.0  # vLLM loading a large model takes minutes
MAX_RETRY_AFTER_S = 60.0
READY_POLL_S = 2.0


def default_warmup_s() -> float:
    """How long a worker waits for its server before the first batch (``FINEHARD_SERVER_WARMUP_S``)."""
    try:
        return float(os.environ.get(WARMUP_ENV, DEFAULT_WARMUP_S))
    except ValueError:
        return DEFAULT_WARMUP_S

def optional_int(value: Any) -> Optional[int]:
    """A ``concurrency`` option: None (unset, or ``auto``) lets the request window adapt; else the number."""
    return None if value is None or str(value).lower() == "auto" else int(value)


T = TypeVar("T")
R = TypeVar("R")


class OpenAIError(RuntimeError):
    """A request that failed for good; ``status`` is the HTTP status (None: no HTTP answer)."""

    def __init__(self, message: str, status: Optional[int] = None, body: str = "",
                 retry_after: Optional[float] = None):
        super().__init__(message)
        self.status = status
        self.body = body[:2000]
        self.retry_after = retry_after  # seconds from the server's Retry-After header


def parse_retry_after(value: Optional[str]) -> Optional[float]:
    """Seconds from a ``Retry-After`` header (delta-seconds or an HTTP date); None when absent or bad."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        from email.utils import parsedate_to_datetime

        return max(0.0, parsedate_to_datetime(value).timestamp() - time.time())
    except (TypeError, ValueError, IndexError):
        return None


class OpenAITimeout(OpenAIError):
    """The server did not answer within the timeout (after all retries)."""


class OpenAIClient:
    """``chat(messages, **extras) -> str`` and ``post_json(path, payload) -> dict`` against one server."""

    def __init__(self, base_url: str, model: str = "", timeout: float = 120.0, retries: int = 2,
                 backoff: float = 0.5, concurrency: Optional[int] = None,
                 api_key_env: Sequence[str] = API_KEY_ENV_VARS):
        if not base_url.startswith(("http://", "https://")):
            raise ValueError(f"base URL must start with http:// or https://, got {base_url!r}")
        self.base_url = base_url.rstrip("/")
        self.model = model
        self.timeout = float(timeout)
        self.retries = int(retries)
        self.backoff = float(backoff)
        # None: the request window adapts its limit to the server (core.adaptive_limit); ``map`` then
        # keeps DEFAULT_CONCURRENCY requests in flight
        self.adaptive = concurrency is None
        self.concurrency = DEFAULT_CONCURRENCY if concurrency is None else max(1, int(concurrency))
        self.overloads = 0  # answers that said the server is overloaded (429, 503, Retry-After) and timeouts
        self._api_key = next((os.environ[v] for v in api_key_env if os.environ.get(v)), "")
        self._pool: Optional[ThreadPoolExecutor] = None
        self._local = threading.local()  # this thread's (generation, httpx client)
        self._clients: list["httpx.Client"] = []  # every thread's, to close
        self._generation = 0  # one more at every close: a thread's client of an earlier one is not used again
        self._ssl: Any = None  # one TLS context for all of them (loading the CA bundle takes ~10 ms)
        self._lock = threading.Lock()

    def __repr__(self) -> str:  # never shows the key
        return f"OpenAIClient({self.base_url!r}, model={self.model!r}, timeout={self.timeout}, retries={self.retries})"

    def _headers(self) -> dict[str, str]:
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if self._api_key:
            headers["Authorization"] = f"Bearer {self._api_key}"
        return headers

    def _http_client(self) -> "httpx.Client":
        """This thread's ``httpx`` client (keep-alive connections). One per thread, not one for all: a request
        window has up to 320 threads, and one shared pool takes a lock per request and per answer under which
        it polls every connection it holds (profiled at 256 slots: the window's threads spent most of their
        time waiting for that lock, and the pipeline sent 34 requests/s where the server took 64)."""
        held = getattr(self._local, "http", None)
        if held is not None and held[0] == self._generation:
            return held[1]
        import httpx

        with self._lock:
            if self._ssl is None:
                self._ssl = httpx.create_ssl_context(trust_env=True)
            client = httpx.Client(headers=self._headers(), follow_redirects=False, trust_env=True, verify=self._ssl,
                                  limits=httpx.Limits(max_connections=4, max_keepalive_connections=1))
            self._clients.append(client)
            self._local.http = (self._generation, client)
        return client

    def _once(self, method: str, path: str, payload: Optional[dict[str, Any]],
              timeout: Optional[float] = None) -> dict[str, Any]:
        import httpx

        url = f"{self.base_url}/{path.lstrip('/')}"
        limit = timeout or self.timeout
        try:
            resp = self._http_client().request(method, url, json=payload,
                                               timeout=httpx.Timeout(limit, connect=min(limit, 10.0)))
            body = resp.text
        except httpx.TimeoutException as e:
            raise OpenAITimeout(f"no answer from {path} within {limit:g}s") from e
        except httpx.TransportError as e:
            reason = e.__context__ if isinstance(e.__context__, OSError) else e
            raise OpenAIError(f"cannot reach {self.base_url}: {reason}") from e
        if resp.status_code >= 400:
            raise OpenAIError(f"HTTP {resp.status_code} from {path}: {body[:300]}", status=resp.status_code,
                              body=body, retry_after=parse_retry_after(resp.headers.get("Retry-After")))
        try:
            out = json.loads(body)
        except ValueError:
            raise OpenAIError(f"answer from {path} is not JSON: {body[:200]!r}", status=200, body=body) from None
        if not isinstance(out, dict):
            raise OpenAIError(f"answer from {path} is not a JSON object", status=200, body=body)
        return out

    def request_json(self, method: str, path: str, payload: Optional[dict[str, Any]] = None) -> dict[str, Any]:
        """One request with retries on transient failures; raises :class:`OpenAIError` otherwise."""
        for attempt in range(self.retries + 1):
            try:
                return self._once(method, path, payload)
            except OpenAIError as e:
                if isinstance(e, OpenAITimeout) or e.status in OVERLOAD_STATUS or e.retry_after is not None:
                    with self._lock:
                        self.overloads += 1
                transient = e.status is None or e.status in RETRY_STATUS
                if not transient or attempt == self.retries:
                    raise
                delay = self.retry_delay(attempt, e.retry_after)
                LOG.debug("retrying %s in %.2fs after %s", path, delay, type(e).__name__)
                time.sleep(delay)
        raise AssertionError("unreachable")

    def retry_delay(self, attempt: int, retry_after: Optional[float] = None) -> float:
        """Exponential backoff with jitter (0.5x-1.5x, so workers do not retry in step); at least
        the server's ``Retry-After`` (capped at a minute)."""
        delay = self.backoff * (2 ** attempt) * random.uniform(0.5, 1.5)
        if retry_after is not None:
            delay = max(delay, min(retry_after, MAX_RETRY_AFTER_S))
        return delay

    def wait_ready(self, budget_s: float, poll_s: Optional[float] = None) -> bool:
        """Wait until the server answers ``GET /models`` (up to ``budget_s`` seconds); True when it does.

        A server that is starting (vLLM loading weights: connection refused, or 502/503/504 from a
        proxy) is polled every ``poll_s`` seconds; any other HTTP answer means it is up (a server
        without a ``/models`` route answers 404). On a timeout it logs a warning and returns False:
        the requests then fail per sample and the run reports them (``--max-failure-rate``).
        """
        poll_s = READY_POLL_S if poll_s is None else poll_s
        started = time.monotonic()
        deadline, next_note, last = started + budget_s, started + 5.0, ""
        while True:
            try:
                self._once("GET", "models", None, timeout=min(self.timeout, 10.0))
                return True
            except OpenAIError as e:
                if e.status is not None and e.status not in NOT_READY_STATUS:
                    return True
                last = str(e)
            now = time.monotonic()
            if now >= deadline:
                LOG.warning("%s did not answer within the %.0fs warm-up budget (%s); going on", self.base_url,
                            budget_s, last)
                return False
            if now >= next_note:
                LOG.info("waiting for %s to be ready (%s): %.0fs of the %.0fs warm-up budget left "
                         "(?warmup=SECONDS in the engine spec)", self.base_url, last, deadline - now, budget_s)
                next_note = now + 30.0
            time.sleep(min(poll_s, max(0.0, deadline - now)))

    def server_queue(self) -> Optional[tuple[float, float]]:
        """``(running, waiting)`` requests as the server's ``/metrics`` says (``stages.engines.server_metrics``);
        None when it does not say (no such route or gauges, no answer within 2 s). Never retried."""
        import httpx

        from stages.engines.server_metrics import METRICS_TIMEOUT_S, metrics_url, parse_queue

        if not self._clients:  # closed (or never used): nothing to ask with
            return None
        try:
            resp = self._http_client().get(metrics_url(self.base_url), timeout=httpx.Timeout(min(self.timeout, METRICS_TIMEOUT_S)))
        except (httpx.HTTPError, RuntimeError):  # RuntimeError: closed meanwhile
            return None
        return parse_queue(resp.text) if resp.status_code == 200 else None

    def post_json(self, path: str, payload: dict[str, Any]) -> dict[str, Any]:
        return self.request_json("POST", path, payload)

    def chat(self, messages: list[dict[str, Any]], **request_extras: Any) -> str:
        """The text of the first choice of a chat completion; extras go into the request body."""
        payload: dict[str, Any] = {"messages": messages, **request_extras}
        if self.model and "model" not in payload:
            payload["model"] = self.model
        answer = self.post_json("chat/completions", payload)
        try:
            content = answer["choices"][0]["message"]["content"]
        except (KeyError, IndexError, TypeError):
            raise OpenAIError(f"chat answer has no choices[0].message.content: {json.dumps(answer)[:200]}",
                              status=200, body=json.dumps(answer)) from None
        return content if isinstance(content, str) else json.dumps(content)

    def map(self, fn: Callable[[T], R], items: Iterable[T]) -> list[R | Exception]:
        """``fn`` over ``items`` with up to ``concurrency`` in flight; a failure is returned, not raised."""
        def safe(item: T) -> R | Exception:
            try:
                return fn(item)
            except Exception as e:  # noqa: BLE001 - per-item failures are the caller's to judge
                return e
        items = list(items)
        if len(items) <= 1 or self.concurrency == 1:
            return [safe(i) for i in items]
        with self._lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(self.concurrency, thread_name_prefix="openai")
        return list(self._pool.map(safe, items))

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False)
            self._pool = None
        with self._lock:
            clients, self._clients = self._clients, []
            self._generation += 1
        for client in clients:
            client.close()
