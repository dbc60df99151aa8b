"""The Beam side of a request window: :class:`WindowedStage`, the DoFn a model stage runs over a server engine
instead of RunInference (the window itself, its jobs and the process's shared engines: ``stages.window``)."""
from __future__ import annotations

import os
import queue
import threading
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Callable, Hashable, Iterable, Optional

import apache_beam as beam
from apache_beam.utils.windowed_value import WindowedValue

from core.engines import EngineRegistry, EngineSpec
from core.record import METRICS_NAMESPACE
from stages.window import WAIT_S, Job, engine_key, engine_window, release_engine, shared_engine


class WindowedStage(beam.DoFn):
    """A model stage over a server engine: ``make_job(engine, record)`` says what each record asks.

    The engine's ``call(argument)`` sends one request (on a window thread; I/O only). Requests with
    the same key from records of one bundle are sent once and answer every record that asked.
    """

    def __init__(self, registry: EngineRegistry, spec: EngineSpec, make_job: Callable[[Any, dict], Job],
                 engine_options: Optional[dict[str, Any]] = None,
                 prepare: Optional[Callable[[list[dict]], None]] = None, build_threads: int = 0):
        self._registry = registry
        self._spec = spec
        self._make_job = make_job
        self._options = dict(engine_options or {})
        self._prepare = prepare  # set: elements are batches of records (windowed_stage), prepared together first
        self._threads = max(0, int(build_threads))  # > 0: jobs are built on that many threads (build_threads)

    def setup(self) -> None:
        self._key = engine_key(self._registry, self._spec, self._options)
        self._engine = shared_engine(self._registry, self._spec, self._options)
        self._window = engine_window(self._engine, f"{self._registry.stage} {self._spec.kind}", self._key)
        ns = f"{METRICS_NAMESPACE}_{self._registry.stage}"
        m = beam.metrics.Metrics
        self._metrics = {"samples": m.counter(ns, "num_inferences"),
                         "requests": m.counter(ns, "window_requests"),
                         "failed": m.counter(ns, "window_failed_requests"),
                         "answer_seconds": m.counter(ns, "window_answer_micros"),
                         "busy_seconds": m.counter(ns, "window_busy_micros"),
                         "in_flight_seconds": m.counter(ns, "window_in_flight_micros"),
                         "in_flight_max": m.distribution(ns, "window_in_flight_max"),
                         "concurrency": m.distribution(ns, "window_concurrency"),
                         "limit_seconds": m.counter(ns, "window_limit_micros"),
                         "adaptive": m.distribution(ns, "window_adaptive")}

    def teardown(self) -> None:
        if getattr(self, "_engine", None) is not None:
            self._engine = None
            release_engine(self._key)

    def start_bundle(self) -> None:
        self._pool = build_pool(self._threads) if self._threads else None
        self._preparing: "deque[tuple[Future, tuple[Any, Any]]]" = deque()  # jobs being built, in arrival order
        self._done: "queue.Queue[tuple[Hashable, Any]]" = queue.Queue()
        self._asked: dict[Hashable, list[Job]] = {}  # request key -> the jobs waiting for its answer
        self._open = 0  # jobs of this bundle not finished

    def _send(self, job: Job, requests: Iterable[tuple[Hashable, Any]]) -> None:
        for key, arg in requests:
            waiting = self._asked.get(key)
            if waiting is not None:  # the same request is in flight for another record: share its answer
                waiting.append(job)
                continue
            self._asked[key] = [job]
            self._window.submit(self._engine.call, arg, self._done, key)

    def _take(self, key: Hashable, result: Any) -> Iterable[Job]:
        """Hand an answer to the jobs that asked; the jobs it finished."""
        for job in self._asked.pop(key, []):
            self._send(job, job.answer(key, result))
            if job.done():
                yield job

    def _drain(self, block: bool) -> Iterable[Job]:
        """Finished jobs from answers in: all that are there, then (``block``) until the window has room."""
        while True:
            try:
                key, result = self._done.get_nowait()
            except queue.Empty:
                if not block or self._window.has_room():
                    return
                try:
                    key, result = self._done.get(timeout=WAIT_S)
                except queue.Empty:
                    continue
            yield from self._take(key, result)

    def _finished(self, job: Job) -> dict:
        self._open -= 1
        self._metrics["samples"].inc()
        return job.finish()

    def process(self, element: Any, timestamp: Any = beam.DoFn.TimestampParam,
                window: Any = beam.DoFn.WindowParam) -> Iterable[dict]:
        """A record; with ``prepare``, a batch of them, handed to ``prepare`` first (CPU work that costs less
        done for many records at once), then taken one by one."""
        if self._prepare is None:
            yield from self._one(element, timestamp, window)
            return
        self._prepare(element)
        for record in element:
            yield from self._one(record, timestamp, window)

    def _one(self, record: dict, timestamp: Any, window: Any) -> Iterable[dict]:
        where = (timestamp, (window,))  # finish_bundle emits a record with its own window
        if self._pool is None:  # the CPU work on this thread, while the window's slots are busy
            yield from (self._finished(job) for job in self._admit(self._make_job(self._engine, record), where))
            return
        self._preparing.append((self._pool.submit(self._make_job, self._engine, record), where))
        # admit the jobs built, oldest first; wait for the oldest only while more are being built than the
        # threads keep busy (so a record's CPU work overlaps the next ones', and answers keep being judged)
        while self._preparing and (self._preparing[0][0].done() or len(self._preparing) > 2 * self._threads):
            future, where = self._preparing.popleft()
            yield from (self._finished(job) for job in self._admit(future.result(), where))

    def _admit(self, job: Job, where: tuple[Any, Any]) -> Iterable[Job]:
        """Send a built job's requests once the window has room; the jobs finished meanwhile (it, if it asks nothing)."""
        job._beam_where = where
        self._open += 1
        requests = job.start()
        if not requests and job.done():
            yield job
            return
        yield from self._drain(block=True)  # wait for room: answers keep being judged meanwhile
        self._send(job, requests)
        yield from self._drain(block=False)

    def finish_bundle(self) -> Iterable[WindowedValue]:
        while self._preparing:
            future, where = self._preparing.popleft()
            for job in self._admit(future.result(), where):
                yield WindowedValue(self._finished(job), *job._beam_where)
        while self._open:
            key, result = self._done.get()
            for job in self._take(key, result):
                yield WindowedValue(self._finished(job), *job._beam_where)
        self._report()

    def _report(self) -> None:
        stats = self._window.take_stats()
        for name in ("requests", "failed"):
            self._metrics[name].inc(int(stats[name]))
        for name in ("answer_seconds", "busy_seconds", "in_flight_seconds", "limit_seconds"):
            self._metrics[name].inc(int(stats[name] * 1e6))
        self._metrics["in_flight_max"].update(int(stats["in_flight_max"]))
        self._metrics["concurrency"].update(int(stats["limit_max"]))  # the largest limit (adaptive: reached so far)
        self._metrics["adaptive"].update(int(self._window.adaptive))


BUILD_THREADS = min(8, os.cpu_count() or 1)  # threads a process builds caption jobs on (decode, resize, JPEG
# encode: Pillow lets go of the GIL there; a 1600 x 1200 JPEG takes ~45 ms, so one thread fed a captioner server
# ~20 images/s where a 256-slot server at 4 s an answer takes 64)
_POOLS: dict[int, ThreadPoolExecutor] = {}
_POOLS_LOCK = threading.Lock()


def build_pool(threads: int) -> ThreadPoolExecutor:
    """The process's pool of ``threads`` job builders, shared by every bundle thread (Dataflow runs many)."""
    with _POOLS_LOCK:
        pool = _POOLS.get(threads)
        if pool is None:
            pool = _POOLS[threads] = ThreadPoolExecutor(threads, thread_name_prefix="window-build")
        return pool


def windowed_stage(registry: EngineRegistry, spec: EngineSpec, make_job: Callable[[Any, dict], Job],
                   engine_options: Optional[dict[str, Any]] = None,
                   prepare: Optional[Callable[[list[dict]], None]] = None, batch: int = 32) -> beam.PTransform:
    """A :class:`WindowedStage` over each record; with ``prepare``, over batches of ``batch`` records (a bundle's
    last may be smaller), each prepared together. The batch only groups the CPU work: requests still leave
    one by one through the window."""
    stage = beam.ParDo(WindowedStage(registry, spec, make_job, engine_options, prepare))
    if prepare is None:
        return stage
    return beam.BatchElements(min_batch_size=batch, max_batch_size=batch) | stage


SERVER_ENGINES = frozenset({"openai"})


def windowed(spec: EngineSpec) -> bool:
    """Whether a stage runs ``spec`` through a request window (a server engine) instead of RunInference."""
    return spec.kind in SERVER_ENGINES
