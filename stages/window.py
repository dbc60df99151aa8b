"""A request window: ``concurrency`` requests in flight to a model server, continuously.

RunInference hands an engine one batch at a time and waits for all of its answers before the
next batch leaves, so a server empties at every batch boundary while the next batch is prepared
(and, with ``BatchElements`` starting at one element, at the start of every run). An engine that
talks to a server does not need batches at all: the server batches (vLLM's continuous batching,
LMDeploy's ``max_batch_size``). So the stages that use such an engine run
``transforms.window.WindowedStage`` (a Beam DoFn over this module's plain threads) instead of RunInference:

- one engine, and with it one :class:`RequestWindow`, per worker process, shared by every bundle
  thread of the process (Dataflow and Flink run several bundles at once per process);
- ``process()`` does a record's CPU work on the bundle's thread (opening and encoding the image,
  spaCy analysis of the expressions, cache reads), then hands its requests to the window and
  returns; the window's threads only send requests and wait for answers, so a slot is refilled
  the moment it frees (the window keeps up to ``2 x concurrency`` requests ready, ``concurrency``
  of them in flight);
- answers are judged (parsed, validated, re-asked, cached) on the bundle's thread, and a record
  leaves as soon as its last answer is in: records come out in completion order, not input order
  (shards are keyed by sample, so nothing downstream depends on the order);
- a bundle waits for its own requests only, at its end (``finish_bundle``).

A :class:`Job` is one record's share of the work: the requests it needs now, what to do with each
answer (maybe a re-ask), and the finished record.
"""
from __future__ import annotations

import contextlib
import json
import logging
import queue
import threading
import time
from collections import deque
from typing import Any, Callable, Hashable, Iterator, Optional

from core.adaptive_limit import MOST, AdaptiveLimit
from core.engines import EngineRegistry, EngineSpec

LOG = logging.getLogger("transforms.window")  # the name these lines always had
PREFETCH = 2  # requests ready per slot: while `concurrency` are in flight, as many more wait to leave
MIN_READY = 64  # and at least this many: a fused stage's thread feeds the window in bursts (a spaCy batch
# of records at a time), so a small window would run dry while that thread works on the next burst
READY_S = 2.0  # and at least as many as the server answers in this long: a fused stage's thread that spends a
# second on a spaCy batch of the stage before (profiled: B=32, L=0.2 s negatives) leaves the window dry otherwise
WAIT_S = 0.05  # how often a bundle blocked on a full window looks again
QUEUE_POLL_S = 0.2  # how often the slow start reads the server's queue (where it says: vLLM's /metrics) ...
QUEUE_POLL_FULL_S = 0.05  # ... and while its whole limit is out with more calls ready (only then can it double:
# a 256-slot server fills in five doublings, a few tenths of a second at this pace, not ~1.1 s; 20 reads a second
# at most, and only in the slow start)
QUEUE_POLL_STEADY_S = 1.0  # ... and how often after it (a rounds' congestion test uses the latest figures)
STATS_EVERY_S = 30.0  # a window logs its in-flight line at most this often


class RequestWindow:
    """Up to ``concurrency`` calls in flight on the window's threads; more wait in its queue.

    ``concurrency=None``: the limit adapts to the server (:class:`core.adaptive_limit.AdaptiveLimit`,
    from 8 up to ``most``, following the answer latency and the server's overload answers, which
    ``pressure()`` counts); a number: that many, fixed.
    ``submit(call, arg, done, key)`` never blocks: the result (or the exception raised) is put on
    ``done`` as ``(key, result)``. ``has_room()`` says whether a caller may add more
    (fewer than ``PREFETCH x`` the limit, at least ``MIN_READY`` and what the server answers in
    ``READY_S``, not yet answered). It also keeps what the user sees of a server:
    requests answered, answer latency, requests in flight (time-weighted mean, max) and the limit
    (time-weighted mean, max).
    """

    def __init__(self, concurrency: Optional[int], name: str = "engine", most: int = MOST,
                 pressure: Optional[Callable[[], int]] = None, limiter: Optional[AdaptiveLimit] = None,
                 server_queue: Optional[Callable[[], Optional[tuple[float, float]]]] = None):
        self.adaptive = concurrency is None
        self.limiter = (limiter or AdaptiveLimit(most=most)) if self.adaptive else None
        # (running, waiting) as the server says (stages.engines.server_metrics), read from the first request on
        self._server_queue = server_queue if self.limiter is not None else None
        self._limit = self.limiter.value if self.limiter else max(1, int(concurrency))
        self.name = name
        self._pressure = pressure or (lambda: 0)
        self._pressure_seen = 0
        self._cond = threading.Condition()
        self._ready: "deque[tuple[Callable[[Any], Any], Any, queue.Queue, Hashable]]" = deque()
        self._threads = 0
        self._closed = False
        self._waiting = 0  # submitted, not yet answered
        self._in_flight = 0
        self._since = time.monotonic()
        self._last_log = time.monotonic()
        self.totals = self._zero()
        self._pending_stats = self._zero()

    def _zero(self) -> dict[str, float]:
        return {"requests": 0, "failed": 0, "answer_seconds": 0.0, "busy_seconds": 0.0, "in_flight_seconds": 0.0,
                "in_flight_max": 0, "limit_seconds": 0.0, "limit_max": self._limit}

    @property
    def concurrency(self) -> int:
        """The limit now (fixed, or where the adaptive limit stands)."""
        return self._limit

    def has_room(self) -> bool:
        with self._cond:
            t = self.totals
            rate = t["requests"] / t["busy_seconds"] if t["busy_seconds"] > 1.0 else 0.0  # answers/s so far
            return self._waiting < max(PREFETCH * self._limit, MIN_READY, int(rate * READY_S))

    @property
    def in_flight(self) -> int:
        return self._in_flight

    def submit(self, call: Callable[[Any], Any], arg: Any, done: "queue.Queue[tuple[Hashable, Any]]",
               key: Hashable) -> None:
        with self._cond:
            self._waiting += 1
            self._ready.append((call, arg, done, key))
            self._start_threads()
            self._cond.notify()
            watch, self._server_queue = self._server_queue, None
        if watch is not None:  # the first request: from now on the limit also reads the server's queue
            threading.Thread(target=self._watch_queue, args=(watch,), name=f"window-{self.name}-queue",
                             daemon=True).start()

    def _watch_queue(self, ask: Callable[[], Optional[tuple[float, float]]]) -> None:
        """Hand the server's own queue figures to the limit while requests are out: every ``QUEUE_POLL_S``
        in the slow start (``QUEUE_POLL_FULL_S`` while its whole limit is out and more calls wait), every
        ``QUEUE_POLL_STEADY_S`` after it; ends when the server does not say."""
        asked = time.monotonic()
        while True:
            time.sleep(QUEUE_POLL_FULL_S)
            with self._cond:
                if self._closed:
                    return
                if not (self._ready or self._in_flight):
                    continue
                slow = self.limiter.slow_start
                full = slow and bool(self._ready) and self._in_flight >= self._limit
            if time.monotonic() - asked < (QUEUE_POLL_FULL_S if full else QUEUE_POLL_S if slow else
                                           QUEUE_POLL_STEADY_S) - 1e-3:
                continue
            asked = time.monotonic()
            try:
                said = ask()
            except Exception:  # noqa: BLE001 - a figure we cannot read is one the server does not give
                said = None
            if said is None:
                LOG.info("%s: the server does not report its queue (/metrics); the limit follows the answer "
                         "latency", self.name)
                return
            with self._cond:
                self.limiter.server_queue(*said, self._in_flight, bool(self._ready), time.monotonic())
                self._set_limit(self.limiter.value)

    def _start_threads(self) -> None:
        """Enough threads for what may be in flight now (under the lock); they live until ``close``."""
        while self._threads < min(self._limit, self._waiting):
            self._threads += 1
            threading.Thread(target=self._serve, name=f"window-{self.name}-{self._threads}", daemon=True).start()

    def _account(self, now: float, delta: int) -> None:
        """Time-weighted in-flight count and limit up to ``now``, then ``delta`` more in flight (under the lock)."""
        span = now - self._since
        for stats in (self.totals, self._pending_stats):
            stats["in_flight_seconds"] += self._in_flight * span
            if self._in_flight:
                stats["busy_seconds"] += span
                stats["limit_seconds"] += self._limit * span
        self._since = now
        self._in_flight += delta
        for stats in (self.totals, self._pending_stats):
            stats["in_flight_max"] = max(stats["in_flight_max"], self._in_flight)

    def _serve(self) -> None:
        """A window thread: take the next call while the limit has room, send it, hand the answer back."""
        while True:
            with self._cond:
                while not self._closed and not (self._ready and self._in_flight < self._limit):
                    self._cond.wait()
                if self._closed:
                    return
                call, arg, done, key = self._ready.popleft()
                start = time.monotonic()
                self._account(start, +1)
            try:
                result = call(arg)
            except BaseException as e:  # noqa: BLE001 - a failing request is that request's answer
                result = e
            self._answered(start, result, done, key)

    def _answered(self, start: float, result: Any, done: "queue.Queue[tuple[Hashable, Any]]", key: Hashable) -> None:
        end = time.monotonic()
        with self._cond:
            bound = bool(self._ready) or self._in_flight >= self._limit  # the limit held requests back
            self._account(end, -1)
            self._waiting -= 1
            for stats in (self.totals, self._pending_stats):
                stats["requests"] += 1
                stats["failed"] += isinstance(result, BaseException)  # raised or returned (a SampleError is an Exception)
                stats["answer_seconds"] += end - start
            if self.limiter is not None:
                pressure = self._pressure()
                self.limiter.answered(start, end - start, bound, pressure > self._pressure_seen, end)
                self._pressure_seen = pressure
                self._set_limit(self.limiter.value)
            self._cond.notify()
            log = end - self._last_log >= STATS_EVERY_S
            if log:
                self._last_log = end
        done.put((key, result))
        if log:
            LOG.info("%s", self.describe())

    def _set_limit(self, limit: int) -> None:
        """A new limit (under the lock): more threads and wake-ups when it grew."""
        grew = limit > self._limit
        self._limit = limit
        for stats in (self.totals, self._pending_stats):
            stats["limit_max"] = max(stats["limit_max"], limit)
        if grew:
            self._start_threads()
            self._cond.notify(limit - self._in_flight)

    def take_stats(self) -> dict[str, float]:
        """What the window did since the last call (for the runner's metrics), then starts anew."""
        with self._cond:
            self._account(time.monotonic(), 0)
            out, self._pending_stats = self._pending_stats, self._zero()
            self._pending_stats["in_flight_max"] = self._in_flight
        return out

    def describe(self) -> str:
        """One line: requests in flight (mean and max against the limit), answer latency, requests/s."""
        t = self.totals
        busy = t["busy_seconds"] or 0.0
        mean = t["in_flight_seconds"] / busy if busy else 0.0
        latency = t["answer_seconds"] / t["requests"] if t["requests"] else 0.0
        rate = t["requests"] / busy if busy else 0.0
        if self.adaptive:
            limit_mean = t["limit_seconds"] / busy if busy else float(self._limit)
            limit = (f"adaptive concurrency {self._limit} now, {limit_mean:.1f} on average, "
                     f"at most {int(t['limit_max'])}")
        else:
            limit = f"concurrency {self._limit}"
        return (f"requests: {self.name}: {mean:.1f} requests in flight on average (max {int(t['in_flight_max'])}, "
                f"{limit}), answer {latency:.2f} s, {rate:.1f} requests/s, "
                f"{int(t['requests'])} answered, {int(t['failed'])} failed")

    def close(self) -> None:
        """The threads end once their call is answered; requests still waiting are not sent."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()


class Job:
    """One record's requests. Subclasses set ``record`` and implement the three methods."""

    record: dict

    def start(self) -> list[tuple[Hashable, Any]]:
        """The requests to send now, as ``(key, argument of the engine's call)``; keys of one job are distinct."""
        raise NotImplementedError

    def answer(self, key: Hashable, result: Any) -> list[tuple[Hashable, Any]]:
        """Take the answer to request ``key`` (an exception when it failed); returns requests to send next."""
        raise NotImplementedError

    def done(self) -> bool:
        raise NotImplementedError

    def finish(self) -> dict:
        """The record, its new fields set or marked dead (called once, when ``done()``)."""
        return self.record


_ENGINES: dict[str, list[Any]] = {}  # key -> [engine, users]
_ENGINES_LOCK = threading.Lock()
_LEARNT: Optional[dict[str, AdaptiveLimit]] = None  # key -> the adaptive limit its last window ended with


@contextlib.contextmanager
def limits_kept() -> Iterator[None]:
    """Within: a server engine's next window in this process starts where its last one's adaptive limit
    ended, instead of at the slow start (the waves of one local run are pipelines of their own, each
    building its engines anew; without this every wave would ramp up from 8 requests again)."""
    global _LEARNT
    _LEARNT = {}
    try:
        yield
    finally:
        _LEARNT = None


def engine_key(registry: EngineRegistry, spec: EngineSpec, options: dict[str, Any]) -> str:
    return json.dumps([registry.stage, spec.raw, options], sort_keys=True, default=str)


def shared_engine(registry: EngineRegistry, spec: EngineSpec, options: dict[str, Any]) -> Any:
    """The process's one engine for ``spec`` and ``options`` (built, and its server waited for, once
    while any DoFn of the pipeline holds it); give it back with :func:`release_engine`."""
    key = engine_key(registry, spec, options)
    with _ENGINES_LOCK:
        held = _ENGINES.get(key)
        if held is None:
            LOG.info("loading %s engine %s", registry.stage, spec.raw)
            held = _ENGINES[key] = [registry.build(spec, **options), 0]
        held[1] += 1
        return held[0]


def release_engine(key: str) -> None:
    """One user less; the last one closes the engine's window and client (a later pipeline builds anew,
    so no state such as a pooled connection or a server's refused request shape outlives a run)."""
    with _ENGINES_LOCK:
        held = _ENGINES.get(key)
        if held is None:
            return
        held[1] -= 1
        if held[1] > 0:
            return
        del _ENGINES[key]
    engine = held[0]
    window = getattr(engine, "_request_window", None)
    if window is not None:
        if window.totals["requests"]:
            LOG.info("%s", window.describe())
        window.close()
        learnt = _LEARNT
        if learnt is not None and window.limiter is not None and window.totals["requests"]:
            learnt[key] = window.limiter
    client = getattr(engine, "client", None)
    if client is not None and hasattr(client, "close"):
        client.close()


def engine_window(engine: Any, name: str, key: Optional[str] = None) -> RequestWindow:
    """The window of a shared engine (``key``: :func:`engine_key`), made once: ``client.concurrency``
    requests in flight when the user set it, else an adaptive limit fed by the client's overload count
    (the one its last window ended with, within :func:`limits_kept`)."""
    with _ENGINES_LOCK:
        window = getattr(engine, "_request_window", None)
        if window is None:
            client = engine.client
            adaptive = getattr(client, "adaptive", False)
            learnt = _LEARNT.pop(key, None) if _LEARNT is not None and key is not None else None
            window = RequestWindow(None if adaptive else client.concurrency, name,
                                   pressure=lambda: getattr(client, "overloads", 0), limiter=learnt,
                                   server_queue=getattr(client, "server_queue", None))
            engine._request_window = window
        return window
