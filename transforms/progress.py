"""Progress of a running job: a pass-through DoFn that logs samples done, rate and ETA."""
from __future__ import annotations

import logging
import time
from typing import Any, Callable, Iterator, Optional

import apache_beam as beam

from core.record import METRICS_NAMESPACE

PROGRESS_LOG = logging.getLogger("finehard.progress")


def progress_line(done: int, elapsed_s: float, total: Optional[int] = None) -> str:
    """``"120/500 samples (24.0%), 3.1/s, ETA 2m03s"`` (no total: no percentage, no ETA)."""
    rate = done / elapsed_s if elapsed_s > 0 else 0.0
    text = f"{done}/{total} samples ({100.0 * done / total:.1f}%)" if total else f"{done} samples"
    text += f", {rate:.1f}/s"
    if total and rate > 0 and done < total:
        eta = int(round((total - done) / rate))
        text += f", ETA {eta // 60}m{eta % 60:02d}s"
    return text


class LogProgress(beam.DoFn):
    """A pass-through DoFn that counts samples and logs done/rate/ETA at most every ``every_s`` seconds.

    Each worker process logs its own share; the Beam counter ``finehard/samples_done`` adds them
    up in the runner's metrics (the Dataflow UI shows it). ``total`` is an optional side input
    (the read count), which gives the percentage and the ETA.
    """

    def __init__(self, every_s: float = 10.0, clock: Optional[Callable[[], float]] = None):
        self.every_s, self.clock = every_s, clock

    def setup(self) -> None:
        self._clock = self.clock or time.monotonic
        self._counter = beam.metrics.Metrics.counter(METRICS_NAMESPACE, "samples_done")
        self._done, self._start, self._last = 0, None, 0.0

    def process(self, element: Any, total: Optional[int] = None) -> Iterator[Any]:
        now = self._clock()
        if self._start is None:
            self._start = self._last = now
        self._done += 1
        self._counter.inc()
        if now - self._last >= self.every_s or (total and self._done == total):
            self._last = now
            PROGRESS_LOG.info("progress: %s", progress_line(self._done, now - self._start, total))
        yield element
