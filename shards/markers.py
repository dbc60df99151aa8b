"""The output folder's names and its completion markers: where a shard's files go, and which shards are done.

A shard ``NAME`` (``shard-00012``) is ``NAME.tar`` with ``deadletter/NAME.jsonl``,
``filtered/NAME.jsonl`` and ``diagnostics/NAME.jsonl`` beside it; ``NAME_stats.json`` is written
last (``shards.write``) and is the marker a re-run reads to skip the shard.
"""
from __future__ import annotations

import json
import logging
import posixpath
from typing import Any

import fsspec

from core.files import read_bounded

LOG = logging.getLogger("finehard")
SHARD_PREFIX = "shard"
STATS_SUFFIX = "_stats.json"
DEADLETTER_DIR = "deadletter"
READ_COUNTS_DIR = "read_counts"  # per read unit: how many input items it held (the independent count)
FILTERED_DIR = "filtered"
DIAGNOSTICS_DIR = "diagnostics"
MAX_MARKER_BYTES = 1 << 20  # a stats marker is a few KiB: a larger file is not one
# what a complete marker holds, as integers (shards.write.shard_stats writes them)
MARKER_COUNTS = ("written", "dead_lettered", "filtered", "shard_id")


def shard_name(shard_id: int) -> str:
    return f"{SHARD_PREFIX}-{shard_id:05d}"


def read_marker(fs: fsspec.AbstractFileSystem, path: str) -> dict[str, Any] | None:
    """A shard's stats marker, or None when it is missing, empty or not a complete stats object."""
    try:
        stats = json.loads(read_bounded(fs, path, MAX_MARKER_BYTES))
    except (OSError, ValueError, RecursionError):
        return None
    if not isinstance(stats, dict) or not all(isinstance(stats.get(k), int) for k in MARKER_COUNTS):
        return None
    return stats


def completed_shards(output: str, retry_failed: bool = False) -> set[int]:
    """Shard ids whose stats marker is complete under ``output``.

    A corrupt or empty marker (a run killed or a disk filled while writing it) is an unfinished
    shard. With ``retry_failed`` a shard holding retryable failures (an engine was down) is
    unfinished too, so a re-run asks again.
    """
    fs, path = fsspec.core.url_to_fs(output)
    if not fs.exists(path):
        return set()
    done = set()
    for p in fs.glob(posixpath.join(path, f"{SHARD_PREFIX}-*{STATS_SUFFIX}")):
        stats = read_marker(fs, p)
        if stats is None:
            LOG.warning("%s is not a complete stats marker: its shard is redone", p)
            continue
        if retry_failed and stats.get("retryable", 0):
            continue
        done.add(stats["shard_id"])
    return done
