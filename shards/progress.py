"""Progress of a running job: pass-through DoFns that count samples per stage.

On local runners every bundle of a counting DoFn keeps its count in a small file under a progress
folder (``<stage>.<bundle>.json``, named after the bundle's first element, replaced atomically at
most every half second and at the end of the bundle, so a retried bundle replaces its failed
attempt's count); the launcher sums those files and shows them (``pipeline.progress_view``: bars on
a terminal, log lines otherwise). That works the same in-memory, multi-threaded and in
``multi_processing`` workers, whose counters Beam's FnApiRunner does not report until the end.
On remote runners there is no shared folder: the last counter logs ``progress: ...`` lines from
each worker instead (Dataflow shows them in the worker logs) and adds to the Beam counter
``finehard/samples_done``.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
import time
from typing import Any, Callable, Iterator, Optional

import apache_beam as beam

from core.record import METRICS_NAMESPACE, Field

PROGRESS_LOG = logging.getLogger("finehard.progress")
FLUSH_EVERY_S = 0.5
FAILED_PREFIX = "failed:"
STARTED_PREFIX = "started:"  # samples handed to a stage (its engine batches them): with its count, those in flight


def format_rate(done: int, elapsed_s: float) -> str:
    """``"3.1/s"``, or ``"4.2s/sample"`` below one per second (slow model stages never show ``0.0/s``)."""
    if done <= 0 or elapsed_s <= 0:
        return "-/s"
    rate = done / elapsed_s
    if rate >= 1.0:
        return f"{rate:.1f}/s"
    return f"{elapsed_s / done:.1f}s/sample"


def format_eta(done: int, elapsed_s: float, total: Optional[int]) -> str:
    """``"ETA 2m07s"`` (``"ETA 1h02m"`` past an hour); empty without a total or a rate."""
    if not total or done <= 0 or elapsed_s <= 0 or done >= total:
        return ""
    eta = int(round((total - done) * elapsed_s / done))
    if eta >= 3600:
        return f"ETA {eta // 3600}h{eta % 3600 // 60:02d}m"
    return f"ETA {eta // 60}m{eta % 60:02d}s"


def progress_line(done: int, elapsed_s: float, total: Optional[int] = None) -> str:
    """``"120/500 samples (24.0%), 3.1/s, ETA 2m03s"`` (no total: no percentage, no ETA)."""
    text = f"{done}/{total} samples ({100.0 * done / total:.1f}%)" if total else f"{done} samples"
    text += f", {format_rate(done, elapsed_s)}" if done else ""
    eta = format_eta(done, elapsed_s, total)
    return f"{text}, {eta}" if eta else text


def _file_stage(stage: str) -> str:
    return stage.replace(":", "~")


def write_count(progress_dir: str, stage: str, instance: str, done: int) -> None:
    """Replace this instance's count file (atomic: a reader never sees half a file)."""
    path = os.path.join(progress_dir, f"{_file_stage(stage)}.{instance}.json")
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump({"stage": stage, "done": done}, f)
    os.replace(tmp, path)


def read_counts(progress_dir: str) -> dict[str, int]:
    """Samples counted so far per stage, summed over every worker's count files."""
    counts: dict[str, int] = {}
    try:
        names = os.listdir(progress_dir)
    except OSError:
        return counts
    for name in names:
        if not name.endswith(".json"):
            continue
        try:
            with open(os.path.join(progress_dir, name), encoding="utf-8") as f:
                got = json.load(f)
            counts[got["stage"]] = counts.get(got["stage"], 0) + int(got["done"])
        except (OSError, ValueError, KeyError, TypeError):
            continue  # vanished or being replaced: the next poll reads it
    return counts


def bundle_id(element: Any) -> str:
    """A name for the bundle that starts with ``element``: its key and source, hashed. A retried bundle
    (Dataflow retries failed bundles, Flink restarts tasks) starts with the same element, so its count
    file replaces the failed attempt's instead of adding to it."""
    who = f"{element.get('key')}\0{element.get('f_path')}" if isinstance(element, dict) else repr(element)
    return hashlib.sha1(who.encode("utf-8", "surrogatepass")).hexdigest()[:16]


def failed_stage(rec: dict[str, Any]) -> str:
    """``failed:<stage>`` for a dead-lettered or filtered record (the stage it left the chain at)."""
    info = rec.get(Field.DEAD) or rec.get(Field.FILTERED) or {}
    return FAILED_PREFIX + str(info.get("stage", "unknown"))


class LogProgress(beam.DoFn):
    """A pass-through DoFn that counts the samples passing one point of the chain.

    ``stage`` names the point (``None``: count failed records by the stage they failed at).
    With ``progress_dir`` (local runners) the count goes to a file the launcher reads; without
    it, ``log_lines`` makes the DoFn log done/rate/ETA at most every ``every_s`` seconds itself.
    ``total`` (constructor or side input) gives the percentage and the ETA.
    """

    def __init__(self, every_s: float = 10.0, clock: Optional[Callable[[], float]] = None,
                 stage: Optional[str] = "done", progress_dir: Optional[str] = None, log_lines: bool = True,
                 total: Optional[int] = None):
        self.every_s, self.clock = every_s, clock
        self.stage, self.progress_dir, self.log_lines, self.total = stage, progress_dir, log_lines, total

    def setup(self) -> None:
        self._clock = self.clock or time.monotonic
        self._counter = beam.metrics.Metrics.counter(METRICS_NAMESPACE, "samples_done")
        self._done, self._start, self._last, self._flushed = 0, None, 0.0, 0.0
        self._stop: Optional[threading.Event] = None
        self._lock = threading.Lock()  # the bundle's thread and the flushing thread write the same files
        self.start_bundle()

    def start_bundle(self) -> None:
        with self._lock:
            self._by_stage: dict[str, int] = {}
            self._bundle: Optional[str] = None

    def _flush(self) -> None:
        if self.progress_dir is None:
            return
        try:
            with self._lock:
                if self._bundle is None:
                    return
                for stage, n in list(self._by_stage.items()):
                    write_count(self.progress_dir, stage, self._bundle, n)
        except OSError:
            pass  # progress is a display: never fail the bundle over it

    def _flush_later(self) -> None:
        """Write the counts every ``FLUSH_EVERY_S`` from a thread, also while no sample passes: the last
        samples handed to a slow engine (a whole batch, in a few microseconds) show at once, not
        when the batch is done."""
        stop = self._stop = threading.Event()
        shown: dict[Any, Any] = {}

        def loop() -> None:
            while not stop.wait(FLUSH_EVERY_S) and os.path.isdir(self.progress_dir):  # gone: the run is over
                now = (self._bundle, dict(self._by_stage))
                if shown.get("last") != now:
                    shown["last"] = now
                    self._flush()

        threading.Thread(target=loop, name="finehard-progress-flush", daemon=True).start()

    def process(self, element: Any, total: Optional[int] = None) -> Iterator[Any]:
        total = total or self.total
        now = self._clock()
        if self._start is None:
            self._start = self._last = now
        if self._bundle is None:
            self._bundle = bundle_id(element)
        self._done += 1
        stage = self.stage if self.stage is not None else failed_stage(element)
        self._by_stage[stage] = self._by_stage.get(stage, 0) + 1
        if self.stage == "done":
            self._counter.inc()
        if self.progress_dir is not None:
            if self._stop is None:
                self._flush_later()
            if now - self._flushed >= FLUSH_EVERY_S:
                self._flushed = now
                self._flush()
        elif self.log_lines and (now - self._last >= self.every_s or (total and self._done == total)):
            self._last = now
            PROGRESS_LOG.info("progress: %s", progress_line(self._done, now - self._start, total))
        yield element

    def finish_bundle(self) -> None:
        self._flush()

    def teardown(self) -> None:
        if getattr(self, "_stop", None) is not None:
            self._stop.set()
