"""Local runs in waves: one Beam pipeline per group of shards, so memory does not grow with the input.

The FnApiRunner (and Beam's Python job server) hands a stage its whole input as one bundle, and
Beam keeps a few kilobytes per element until that bundle ends: a 100,000-sample local run needs
about a gigabyte more than a 10,000-sample one (docs/benchmarks.md, "Where local memory grows").
Dataflow and Flink cut bundles themselves; a local run instead cuts its input: when the listing
expects more than ``--wave-samples`` samples, the shards are split into contiguous ranges
(:func:`plan_waves`) and each range runs as its own pipeline over the whole input listing, keeping
only the records whose key hashes into its shards (``ReadImages(want=...)``: the other records
are counted but their images are neither read, where the reader can skip them, nor decoded).

What every wave needs from the whole input is decided once, before the first wave:

* the shard count (already decided from the listing before anything runs);
* the duplicates (``--dedup``): a first pipeline reads and hashes every image (:func:`hash_line`
  per record, written by :class:`WriteHashRows` to ``OUTPUT/.waves/``) and the launcher takes the
  same decisions ``DropDuplicates`` would (``transforms.dedup.duplicates_of``). That pass costs a
  second read and decode of the input; ``--no-dedup`` runs skip it.

Shards, markers and dead-letter lists are byte-identical to a run in one pass (tested), and a
killed run resumes wave by wave: a wave whose shards are all complete is not run again. The price:
each wave is a new pipeline (~1-1.5 s to build and start) and lists the whole input again (~25 µs
a row), a term that grows as waves x rows (docs/benchmarks.md, "Local runs in waves").
"""
from __future__ import annotations

import base64
import hashlib
import json
import logging
import math
import posixpath
from typing import Any, Iterable, Iterator, Optional

import apache_beam as beam
import fsspec

from core.files import atomic_write
from core.run_config import RunConfig
from pipeline.interrupt import on_stop
from shards.metrics import DERIVED_METRICS, MAX_METRICS, finish_stage_metrics
from pipeline.runners import make_runner
from transforms.common import split_outcomes
from stages.dedup import Ref, duplicates_of, hash_row
from transforms.graph import read_input
from shards.write import ShardRange

LOG = logging.getLogger("finehard")
WAVES_DIR = ".waves"  # under OUTPUT: the hash rows of the duplicate pass, removed when the run ends
ROWS_PER_FILE = 10_000


def plan_waves(num_shards: int, size: Optional[int], wave_samples: int) -> list[ShardRange]:
    """The shard ranges of a run in waves of about ``wave_samples`` samples; [] for one pass.

    One pass when waves are off (0), the input's size is not known from the listing, it fits in
    one wave, or it has a single shard (a wave is a set of whole shards: memory is bounded by the
    larger of a wave and a shard).
    """
    if wave_samples <= 0 or size is None or size <= wave_samples or num_shards <= 1:
        return []
    n = min(num_shards, math.ceil(size / wave_samples))
    return [ShardRange(w * num_shards // n, (w + 1) * num_shards // n, num_shards) for w in range(n)]


def hash_line(rec: dict[str, Any], near: bool, keep: str = "first") -> str:
    """One json line: the record's key, hashes and rank (``transforms.dedup.hash_row``)."""
    key, sha, dh, thumb, rank = hash_row(rec, near, keep)
    return json.dumps([key, sha, dh, base64.b64encode(thumb).decode() if thumb is not None else None, rank])


class WriteHashRows(beam.DoFn):
    """Lines -> ``ROOT/<sha1 of the lines>.jsonl`` files of at most ``ROWS_PER_FILE`` lines (nothing held per
    bundle). A file is named after what it holds: a retried bundle rewrites the same files instead of
    adding a second copy of its rows (which would make a sample a duplicate of itself)."""

    def __init__(self, root: str):
        self.root = root

    def start_bundle(self) -> None:
        self._lines: list[str] = []

    def _flush(self) -> None:
        if self._lines:
            fs, root = fsspec.core.url_to_fs(self.root)
            fs.makedirs(root, exist_ok=True)
            body = ("\n".join(self._lines) + "\n").encode()
            atomic_write(fs, posixpath.join(root, f"{hashlib.sha1(body).hexdigest()}.jsonl"), body)
            self._lines = []

    def process(self, line: str) -> Iterator[None]:
        self._lines.append(line)
        if len(self._lines) >= ROWS_PER_FILE:
            self._flush()
        return iter(())

    def finish_bundle(self) -> None:
        self._flush()


def read_hash_rows(root: str) -> Iterator[tuple[str, str, Optional[int], Optional[bytes], tuple[Any, ...]]]:
    """The rows :class:`WriteHashRows` wrote under ``root``, file by file."""
    fs, path = fsspec.core.url_to_fs(root)
    for p in sorted(fs.glob(posixpath.join(path, "*.jsonl"))):
        with fs.open(p, "rt", encoding="utf-8") as f:
            for line in f:
                key, sha, dh, thumb, rank = json.loads(line)
                yield key, sha, dh, base64.b64decode(thumb) if thumb is not None else None, tuple(rank)


def waves_root(output: str) -> str:
    return posixpath.join(output.rstrip("/"), WAVES_DIR)


def remove_waves_dir(output: str) -> None:
    fs, root = fsspec.core.url_to_fs(waves_root(output))
    if fs.exists(root):
        fs.rm(root, recursive=True)


def merge_stage_metrics(runs: Iterable[dict[str, dict[str, Any]]]) -> dict[str, dict[str, Any]]:
    """``shards.metrics.stage_metrics`` of several pipelines (the waves) as one run's."""
    merged: dict[str, dict[str, Any]] = {}
    for metrics in runs:
        for stage, values in metrics.items():
            into = merged.setdefault(stage, {})
            for k, v in values.items():
                if k in MAX_METRICS and v is not None:
                    into[k] = max(into.get(k, 0), v)
                elif k not in DERIVED_METRICS and v is not None:
                    into[k] = into.get(k, 0) + v
    return finish_stage_metrics(merged)


def build_hash_pipeline(p: beam.Pipeline, config: RunConfig) -> None:
    """The duplicate pass of a run in waves: key and hashes of every record that reaches
    ``DropDuplicates`` in ``transforms.graph.build_pipeline`` (those read without failure) to OUTPUT/.waves/."""
    near = config.near_dup_threshold >= 0
    live, _, _ = split_outcomes(read_input(p, config, counts_root=None, near_hashes=near), "read")
    _ = (live | "HashRow" >> beam.Map(hash_line, near=near, keep=config.dedup_keep)
         | "WriteHashRows" >> beam.ParDo(WriteHashRows(waves_root(config.output))))


def find_duplicates(config: RunConfig, options: Any, size: Optional[int]) -> dict[str, Ref]:
    """The duplicate decisions over the whole input, for a run in waves: one pass that reads and
    hashes every image (:func:`build_hash_pipeline`), then ``transforms.dedup.duplicates_of``."""
    remove_waves_dir(config.output)
    LOG.info("waves: hashing all %s images first (no progress shown meanwhile), so each wave drops the "
             "duplicates one pass would; --no-dedup skips this", f"{size:,}" if size is not None else "the")
    with on_stop(lambda: remove_waves_dir(config.output)):
        try:
            p = beam.Pipeline(runner=make_runner(config), options=options)
            build_hash_pipeline(p, config)
            p.run().wait_until_finish()
            return duplicates_of(lambda: read_hash_rows(waves_root(config.output)), config.near_dup_threshold)
        finally:
            remove_waves_dir(config.output)
