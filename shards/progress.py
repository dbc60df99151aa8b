"""Progress of a running job, the plain part: count files, rates, ETAs and progress lines.

On local runners every bundle of a counting DoFn (``transforms.progress.LogProgress``) keeps its
count in a small file under a progress folder (``<stage>.<bundle>.json``, named after the bundle's
first element (:func:`bundle_id`), replaced atomically at most every half second and at the end of
the bundle, so a retried bundle replaces its failed attempt's count); the launcher sums those files
(:func:`read_counts`) and shows them (``pipeline.progress_view``: bars on a terminal, log lines
otherwise). That works the same in-memory, multi-threaded and in ``multi_processing`` workers,
whose counters Beam's FnApiRunner does not report until the end. On remote runners there is no
shared folder: the last counter logs ``progress: ...`` lines (:func:`progress_line`) from each
worker instead (Dataflow shows them in the worker logs) and adds to the Beam counter
``finehard/samples_done``.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
from typing import Any, Optional

from core.record import Field

PROGRESS_LOG = logging.getLogger("finehard.progress")
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
