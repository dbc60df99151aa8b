"""The launcher's view of a local run's progress: bars on a terminal, log lines otherwise.

Workers count samples per stage into small files (``transforms.progress``); a thread here sums
them twice a second. On a terminal (stderr a TTY, not ``-q``) it draws one ``rich`` progress bar
per stage (done / expected, rate, ETA, samples in flight); otherwise it logs one line as soon as
samples move, then one every ``--progress-every-s`` seconds whether or not a sample finished (a
slow engine still shows it is working, and how many samples it holds), and a last line at the end::

    progress: recaption 20/29 (69.0%), 3.1/s, ETA 0m03s, 8 in flight | read 29, recaption 20, ...
"""
from __future__ import annotations

import itertools
import json
import logging
import os
import posixpath
import shutil
import sys
import tempfile
import threading
import time
from typing import IO, Any, Iterable, Iterator, Optional, Sequence

import fsspec

from pipeline.logs import LEVEL_ENV
from shards.progress import FAILED_PREFIX, PROGRESS_LOG, STARTED_PREFIX, format_eta, format_rate, read_counts

POLL_S = 0.5


MAX_COUNTED_MANIFEST_BYTES = 512 << 20  # jsonl manifests larger than this in all: the size is not counted
COUNT_CHUNK_CHARS = 1 << 20
LINE_BREAKS = "\n\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029"  # where str.splitlines splits a line


def count_lines(chunks: Iterable[str]) -> int:
    """The non-blank lines of a text given in ``chunks``, as ``str.splitlines`` splits the whole text,
    holding one chunk (and a stand-in for the line it ends in) at a time."""
    rows, tail = 0, ""
    for chunk in chunks:
        lines = (tail + chunk).splitlines(keepends=True)
        tail = lines.pop() if lines and lines[-1][-1] not in LINE_BREAKS else ""
        rows += sum(1 for line in lines if line.strip())
        tail = "x" if tail.strip() else ""  # whatever follows, that line counts (or, blank so far, not yet)
    return rows + (1 if tail else 0)


def count_manifest_rows(f: IO[str], json_file: bool = False, chunk_chars: int = COUNT_CHUNK_CHARS) -> int:
    """The rows of a jsonl manifest opened as text: its non-blank lines, read in chunks.

    A ``.json`` file (``json_file``) that holds a JSON array is parsed whole: the length of the array.
    """
    chunks: Iterator[str] = iter(lambda: f.read(chunk_chars), "")
    if json_file:
        head = next((c for c in chunks if c.strip()), "")  # whitespace before the first text holds no rows
        if head.lstrip().startswith("["):
            return len(json.loads(head + f.read()))
        chunks = itertools.chain([head], chunks)
    return count_lines(chunks)


class SampleCount:
    """How many samples the input holds, from the listing when that is cheap; ``total`` None when unknown.

    Files: one per path. Manifests: JSON lines counted (parquet: its footer's row count), up to
    ``max_manifest_bytes`` in all. Tars: the ``sizes.json`` beside them (img2dataset and our own
    output write one), else unknown. Units are added one at a time as the listing streams by
    (:func:`expected_samples` for a whole listing).
    """

    def __init__(self, max_manifest_bytes: int = MAX_COUNTED_MANIFEST_BYTES):
        self.total: Optional[int] = 0
        self.max_manifest_bytes = max_manifest_bytes
        self._manifest_bytes = 0
        self._sizes: dict[str, Optional[dict[str, Any]]] = {}

    def add(self, unit: Any, rows: Optional[int] = None) -> None:
        """Count ``unit``; ``rows``: what the caller already knows it holds (a parquet footer it read)."""
        if self.total is None:
            return
        try:
            n = rows if rows is not None else self._count(unit)
        except Exception:  # noqa: BLE001 - an estimate only: the run reads (and reports) the input itself
            n = None
        self.total = None if n is None else self.total + n

    def _count(self, unit: Any) -> Optional[int]:
        if unit.kind in ("files", "skipped"):  # one record per listed path
            return len(unit.uris)
        fs, path = fsspec.core.url_to_fs(unit.uris[0])
        if unit.kind == "tar":
            folder = posixpath.dirname(path)
            if folder not in self._sizes:
                sizes_path = posixpath.join(folder, "sizes.json")
                self._sizes[folder] = None
                if fs.exists(sizes_path):
                    with fs.open(sizes_path, "rt", encoding="utf-8") as f:
                        self._sizes[folder] = json.load(f)
            sizes = self._sizes[folder]
            if not sizes or posixpath.basename(path) not in sizes:
                return None
            return plausible_tar_size(int(sizes[posixpath.basename(path)]), path, fs.size(path))
        if path.lower().endswith(".parquet"):
            import pyarrow.parquet as pq

            with fs.open(path, "rb") as f:
                return pq.ParquetFile(f).metadata.num_rows
        self._manifest_bytes += fs.size(path) or 0
        if self._manifest_bytes > self.max_manifest_bytes:
            return None
        with fs.open(path, "rt", encoding="utf-8") as f:
            return count_manifest_rows(f, json_file=path.lower().endswith(".json"))


LOG = logging.getLogger("finehard")
TAR_BLOCK = 512  # every member of an uncompressed tar takes at least one header block


def plausible_tar_size(claimed: int, path: str, size: Optional[int]) -> Optional[int]:
    """A ``sizes.json`` count is a hint: ``claimed`` when the tar's own byte size can hold that many
    samples (a member takes at least one 512-byte header block; a compressed tar at least a byte per
    sample), else None (unknown: the run counts what it reads) and a warning. A sidecar claiming
    100,000,000 samples for a 10-image tar must not plan 100,000 shards and hours of waves."""
    if size is None or claimed < 0:
        return None
    per_sample = TAR_BLOCK if path.lower().endswith(".tar") else 1
    if claimed * per_sample <= size:
        return claimed
    LOG.warning("sizes.json says %s holds %s samples, more than its %s bytes can hold; the count is "
                "ignored (the run counts what it reads)", path, f"{claimed:,}", f"{size:,}")
    return None


def expected_samples(units: Iterable[Any], max_manifest_bytes: int = MAX_COUNTED_MANIFEST_BYTES) -> Optional[int]:
    """The :class:`SampleCount` of a listing; None when unknown."""
    count = SampleCount(max_manifest_bytes)
    for unit in units:
        count.add(unit)
        if count.total is None:
            return None
    return count.total


class ProgressView:
    """Context manager: a progress folder for the workers and a thread that shows what they count.

    ``stages`` are the counting points in chain order (``read`` first, ``done`` last);
    ``total`` the samples expected (None: counts, rates and no ETA).
    """

    def __init__(self, stages: Sequence[str], total: Optional[int], every_s: float = 10.0,
                 tty: Optional[bool] = None):
        self.stages, self.total, self.every_s = list(stages), total, every_s
        self.tty = (sys.stderr.isatty() and os.environ.get("TERM") != "dumb"
                    and PROGRESS_LOG.isEnabledFor(logging.INFO)) if tty is None else tty
        self.dir = ""
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self._first: dict[str, float] = {}
        self._bars: Any = None
        self._logged: Optional[dict[str, int]] = None

    def __enter__(self) -> "ProgressView":
        self.dir = tempfile.mkdtemp(prefix="finehard-progress-")
        self._started = time.monotonic()
        if self.tty:
            # multi-process workers print straight to the terminal: only their warnings, under the bars (through
            # the environment: Beam starts those processes, pipeline.worker reads it)
            self._worker_level = os.environ.get(LEVEL_ENV)
            if logging.getLevelName(self._worker_level or "INFO") in (logging.DEBUG, logging.INFO):
                os.environ[LEVEL_ENV] = "WARNING"
            self._start_bars()
        else:
            what = f"{self.total} samples" if self.total is not None else "samples (total unknown)"
            PROGRESS_LOG.info("progress: started, %s through %s", what,
                              " -> ".join(s for s in self.stages if s != "done"))
        self._thread = threading.Thread(target=self._loop, name="finehard-progress", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._show(read_counts(self.dir), final=True)
        if self._bars is not None:
            self._stop_bars()
            if self._worker_level is None:
                os.environ.pop(LEVEL_ENV, None)
            else:
                os.environ[LEVEL_ENV] = self._worker_level
        shutil.rmtree(self.dir, ignore_errors=True)

    # -- what is shown ------------------------------------------------------------------------

    def stage_totals(self, counts: dict[str, int]) -> dict[str, Optional[int]]:
        """Each stage's expected count: the total less what failed at the stages before it."""
        totals: dict[str, Optional[int]] = {}
        failed_before = 0
        for stage in self.stages:
            if stage in ("read", "done"):
                totals[stage] = self.total
            else:
                totals[stage] = None if self.total is None else self.total - failed_before
            failed_before += counts.get(FAILED_PREFIX + stage, 0)
        return totals

    def stage_start(self, stage: str) -> float:
        """When ``stage`` could start: the first sample counted at the point before it (or the run's start)."""
        i = self.stages.index(stage)
        return self._first.get(self.stages[i - 1], self._started) if i > 0 else self._started

    @staticmethod
    def in_flight(counts: dict[str, int], stage: str) -> int:
        """Samples handed to ``stage`` that it has not finished (nor failed) yet."""
        started = counts.get(STARTED_PREFIX + stage, 0)
        return max(0, started - counts.get(stage, 0) - counts.get(FAILED_PREFIX + stage, 0)) if started else 0

    def headline_stage(self, counts: dict[str, int], totals: dict[str, Optional[int]]) -> str:
        """The stage the line leads with: the first in chain order with samples in flight (stages overlap:
        records go on while earlier ones are still asked, and the first model stage at work paces the run),
        else the first that has begun and not yet finished all its samples, else the furthest one with samples
        done. (Not only "begun and unfinished": in a run in waves the read stops at each wave's share of the
        input, and would lead all wave long with a falling rate and a growing ETA.)"""
        working = next((s for s in self.stages if self.in_flight(counts, s)), None)
        if working is not None:
            return working
        for stage in self.stages:  # from here on no stage has samples in flight: only the counts done decide
            total, n = totals.get(stage), counts.get(stage, 0)
            if total is not None and n and n + counts.get(FAILED_PREFIX + stage, 0) < total:
                return stage
        return next((s for s in reversed(self.stages) if counts.get(s, 0)), self.stages[0])

    def line(self, counts: dict[str, int], now: float) -> str:
        """The stage now pacing the run (:meth:`headline_stage`) with rate, ETA and samples in flight, then
        every count."""
        totals = self.stage_totals(counts)
        active = self.headline_stage(counts, totals)
        n, total = counts.get(active, 0), totals.get(active)
        elapsed = now - self.stage_start(active)
        head = f"{active} {n}/{total} ({100.0 * n / total:.1f}%)" if total else f"{active} {n}"
        if n and elapsed >= POLL_S:
            head += f", {format_rate(n, elapsed)}"
        eta = format_eta(n, elapsed, total)
        if eta:
            head += f", {eta}"
        busy = self.in_flight(counts, active)
        if busy:
            head += f", {busy} in flight"
        parts = [f"{s} {counts.get(s, 0)}" + (f" ({k} in flight)" if (k := self.in_flight(counts, s)) else "")
                 for s in self.stages]
        failed = sum(v for k, v in counts.items() if k.startswith(FAILED_PREFIX))
        if failed:
            parts.append(f"dead-lettered/filtered {failed}")
        return f"{head} | {', '.join(parts)}"

    def _note_first(self, counts: dict[str, int], now: float) -> None:
        """When each stage counted its first sample (its rate is measured from then)."""
        for stage, n in counts.items():
            if n:
                self._first.setdefault(stage, now)

    def _loop(self) -> None:
        last_line = None
        while not self._stop.wait(POLL_S):
            counts = read_counts(self.dir)
            now = time.monotonic()
            self._note_first(counts, now)
            if self._bars is not None:
                self._update_bars(counts)
            elif (counts and last_line is None) or now - (last_line or self._started) >= self.every_s:
                # the first line as soon as samples move, then one every every_s even when nothing finished
                PROGRESS_LOG.info("progress: %s", self.line(counts, now))
                last_line, self._logged = now, counts

    def _show(self, counts: dict[str, int], final: bool) -> None:
        now = time.monotonic()
        self._note_first(counts, now)
        if self._bars is not None:
            self._update_bars(counts)
        elif final and counts != self._logged:
            PROGRESS_LOG.info("progress: %s", self.line(counts, now))

    # -- terminal bars ------------------------------------------------------------------------

    def _start_bars(self) -> None:
        from rich.console import Console
        from rich.progress import BarColumn, Progress, ProgressColumn, TextColumn
        from rich.text import Text

        view = self

        class RateEta(ProgressColumn):
            def render(self, task: Any) -> Text:
                elapsed = time.monotonic() - view.stage_start(task.fields["stage"])
                done = int(task.completed)
                total = int(task.total) if task.total is not None else None
                busy = task.fields.get("in_flight", 0)
                parts = [format_rate(done, elapsed), format_eta(done, elapsed, total)] if (
                    done and elapsed >= POLL_S) else []
                return Text("  ".join(p for p in [*parts, f"{busy} in flight" if busy else ""] if p))

        self._console = Console(stderr=True)
        self._bars = Progress(TextColumn("{task.description:<12}"), BarColumn(),
                              TextColumn("{task.completed:>7.0f}/{task.fields[total_text]}"), RateEta(),
                              console=self._console, transient=False, refresh_per_second=4)
        self._tasks = {s: self._bars.add_task(s, total=self.total, stage=s,
                                              total_text=str(self.total) if self.total is not None else "?")
                       for s in self.stages}
        self._bars.start()
        # log lines printed while the bars are shown go above them, not through them
        # (a handler left with a closed stream, e.g. by an embedding program, is left alone: setStream flushes it)
        self._handlers = [h for h in logging.getLogger().handlers if isinstance(h, logging.StreamHandler)
                          and not getattr(h.stream, "closed", False)]
        self._streams = [h.setStream(sys.stderr) for h in self._handlers]  # rich's proxy while the bars are up

    def _update_bars(self, counts: dict[str, int]) -> None:
        for stage, total in self.stage_totals(counts).items():
            self._bars.update(self._tasks[stage], completed=counts.get(stage, 0), total=total,
                              total_text=str(total) if total is not None else "?",
                              in_flight=self.in_flight(counts, stage))

    def _stop_bars(self) -> None:
        self._bars.stop()
        for h, old in zip(self._handlers, self._streams):
            if old is not None:
                h.setStream(old)


def progress_for_run(args: Any, total: Optional[int], done: set[int], local: bool, stages: Sequence[str]) -> Any:
    """The launcher's progress display for a local ``finehard shards`` run (``total``: the input's size
    from :func:`expected_samples`, None when unknown); a no-op context otherwise (remote workers log
    their own ``progress:`` lines)."""
    import contextlib

    if not local or args.progress_every_s <= 0:
        return contextlib.nullcontext(None)
    if total is not None and done:  # resuming: the completed shards' samples are not read again
        from shards.output import read_shard_stats

        total = max(0, total - sum(s["read"] for s in read_shard_stats(args.output) if s.get("shard_id") in done))
    return ProgressView(stages, total, every_s=args.progress_every_s)
