"""Progress of a running job: pass-through DoFns that count samples per stage.

What they count and where it goes (count files on local runners, ``progress: ...`` log lines and
the Beam counter ``finehard/samples_done`` on remote ones) is described in ``shards.progress``,
which holds the plain part: the count files, rates, ETAs and lines.
"""
from __future__ import annotations

import os
import threading
import time
from typing import Any, Callable, Iterator, Optional

import apache_beam as beam

from core.record import METRICS_NAMESPACE
from shards.progress import PROGRESS_LOG, bundle_id, failed_stage, progress_line, write_count

FLUSH_EVERY_S = 0.5


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
