"""WriteShards: deterministic WebDataset shards, per-shard stats, dead-letter and filtered lists.

Membership comes from the key (``sha1(key) mod num_shards``, with ``num_shards`` from the number
of samples read), never from bundling. Each shard's samples are sorted by key and written with
fixed tar metadata to ``NAME.tar.inprogress``, renamed to ``NAME.tar`` when complete; the
dead-letter and filtered lists follow, and ``NAME_stats.json`` is written last: it is the
completion marker a re-run uses to skip the shard. On a local disk each file is flushed to the
device before its rename and its folder after it (``core.files.atomic_open(durable=True)``), so
the marker is never durable before the data it vouches for (a power cut leaves no marker beside a
torn tar). Every file's name and bytes follow from the shard's records alone: a retried bundle
(Dataflow retries failed bundles, Flink restarts tasks) leaves the same files as one attempt.
"""
from __future__ import annotations

import hashlib
import io
import json
import logging
import math
import posixpath
import tarfile
from collections import Counter
from dataclasses import dataclass
from typing import IO, Any, Iterable, Optional

import apache_beam as beam
import fsspec
from fsspec.implementations.local import LocalFileSystem

from core.files import atomic_open, atomic_write, fsync_dir, read_bounded
from core.record import PROJECT_VERSION, RETRYABLE_REASONS, Field, SampleError, public_fields
from core.spill import image_bytes

LOG = logging.getLogger("finehard")
SHARD_PREFIX = "shard"
STATS_SUFFIX = "_stats.json"
DEADLETTER_DIR = "deadletter"
READ_COUNTS_DIR = "read_counts"  # per read unit: how many input items it held (the independent count)
FILTERED_DIR = "filtered"
DIAGNOSTICS_DIR = "diagnostics"
MAX_MARKER_BYTES = 1 << 20  # a stats marker is a few KiB: a larger file is not one
TAR_MTIME = 0.0  # fixed metadata: same input + engines => byte-identical tars


class ShardTarWriter:
    """A WebDataset tar writer: ``KEY.EXT`` members, sorted by extension, fixed metadata.

    The same bytes as ``webdataset.TarWriter(user="finehard", group="finehard", mode=0o444,
    mtime=0, encoder=False)`` (tested), without importing webdataset, which imports torch (~3 s
    and most of a worker's memory) in every process that writes shards.
    """

    def __init__(self, fileobj: IO[bytes]):
        self.tar = tarfile.open(fileobj=fileobj, mode="w|")

    def write(self, key: str, members: dict[str, bytes]) -> None:
        for ext in sorted(members):
            data = members[ext]
            info = tarfile.TarInfo(f"{key}.{ext}")
            info.size, info.mtime, info.mode = len(data), TAR_MTIME, 0o444
            info.uname = info.gname = "finehard"
            self.tar.addfile(info, io.BytesIO(data))

    def __enter__(self) -> "ShardTarWriter":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.tar.close()


def shard_name(shard_id: int) -> str:
    return f"{SHARD_PREFIX}-{shard_id:05d}"


def num_shards_for(count: int, samples_per_shard: int) -> int:
    return max(1, math.ceil(count / samples_per_shard))


def shard_of(key: str, num_shards: int) -> int:
    return int.from_bytes(hashlib.sha1(key.encode("utf-8")).digest()[:8], "big") % num_shards


@dataclass(frozen=True)
class ShardRange:
    """The keys of shards ``lo <= shard < hi`` of ``num_shards``: one wave of a local run (``pipeline.waves``)."""

    lo: int
    hi: int
    num_shards: int

    def __call__(self, key: str) -> bool:
        return self.lo <= shard_of(key, self.num_shards) < self.hi

    def shards(self) -> range:
        return range(self.lo, self.hi)


def read_marker(fs: fsspec.AbstractFileSystem, path: str) -> dict[str, Any] | None:
    """A shard's stats marker, or None when it is missing, empty or not a complete stats object."""
    try:
        stats = json.loads(read_bounded(fs, path, MAX_MARKER_BYTES))
    except (OSError, ValueError, RecursionError):
        return None
    if not isinstance(stats, dict) or not all(isinstance(stats.get(k), int) for k in ("written", "dead_lettered",
                                                                                       "filtered", "shard_id")):
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


def is_retryable(rec: dict[str, Any]) -> bool:
    return rec.get(Field.DEAD, {}).get("reason") in RETRYABLE_REASONS


def shard_record(rec: dict[str, Any]) -> dict[str, Any]:
    """The emitted ``.json`` member: the record without its internal fields (``core.record.Field``)."""
    out = public_fields(rec)
    out.setdefault("caption", "")
    out.setdefault("bbox_info", [])
    prov = dict(out.get("provenance", {}))
    prov["version"] = PROJECT_VERSION
    out["provenance"] = prov
    return out


def letter(rec: dict[str, Any], kind: str) -> dict[str, Any]:
    """One dead-letter / filtered line: key, source URI, stage, reason, detail."""
    info = rec[kind]
    line = {"key": rec.get("key"), "f_path": rec.get("f_path"), "stage": info["stage"],
            "reason": info["reason"], "detail": info.get("detail", "")}
    if kind == Field.DEAD and info["reason"] in RETRYABLE_REASONS:
        line["retryable"] = True
    return line


def write_shard(output: str, shard_id: int, num_shards: int, items: Iterable[dict[str, Any]],
                run_info: dict[str, Any]) -> dict[str, Any]:
    """Write one shard and its lists; returns the shard's stats."""
    fs, root = fsspec.core.url_to_fs(output)
    name = shard_name(shard_id)
    ok, dead, filtered = [], [], []
    for rec in items:
        (dead if Field.DEAD in rec else filtered if Field.FILTERED in rec else ok).append(rec)
    ok.sort(key=lambda r: (r["key"], r["f_path"]))
    written, seen = [], set()
    for rec in ok:
        if rec["key"] in seen:
            rec[Field.DEAD] = {"stage": "write", "reason": "duplicate_key", "detail": "an earlier sample has this key"}
            dead.append(rec)
        else:
            seen.add(rec["key"])
            written.append(rec)

    fs.makedirs(root, exist_ok=True)
    tar_path = posixpath.join(root, f"{name}.tar")
    local = isinstance(fs, LocalFileSystem)
    while True:
        stats: Counter[str] = Counter()
        current = None
        try:
            with atomic_open(None if local else fs, tar_path, tmp=tar_path + ".inprogress", durable=True) as f, \
                    ShardTarWriter(f) as tw:
                for current in written:  # streamed to disk sample by sample: a shard is never held in memory
                    record_json = shard_record(current)
                    tw.write(current["key"], {
                        current.get(Field.EXT, "jpg"): image_bytes(current),
                        "json": json.dumps(record_json, sort_keys=True, ensure_ascii=False).encode("utf-8"),
                        "txt": record_json["caption"].encode("utf-8"),
                    })
                    stats.update(current.get(Field.STATS, {}))
            break
        except SampleError as e:  # a source file changed since it was checked: that sample is dead-lettered
            if current is None:
                raise
            written.remove(current)
            current[Field.DEAD] = {"stage": "write", "reason": e.reason, "detail": e.detail[:500]}
            dead.append(current)  # and the shard is written again without it

    lists = [(folder, sorted((letter(r, kind) for r in recs), key=lambda x: (x["key"] or "", x["f_path"] or "")))
             for kind, recs, folder in ((Field.DEAD, dead, DEADLETTER_DIR), (Field.FILTERED, filtered, FILTERED_DIR))]
    lists.append((DIAGNOSTICS_DIR, sorted(({"key": r["key"], **d} for r in written + dead + filtered
                                            for d in r.get(Field.DIAGNOSTICS, [])),
                                           key=lambda d: (d["key"], str(d.get("expression"))))))  # invalid answers
    for folder, lines in lists:
        path = posixpath.join(root, folder, f"{name}.jsonl")
        if lines:
            fs.makedirs(posixpath.join(root, folder), exist_ok=True)
            atomic_write(fs, path, "".join(json.dumps(x, sort_keys=True, ensure_ascii=False) + "\n"
                                           for x in lines).encode("utf-8"), durable=True)
        elif fs.exists(path):
            fs.rm(path)
            if local:
                fsync_dir(posixpath.join(root, folder))
    dead_by: Counter[str] = Counter(f"{r[Field.DEAD]['stage']}:{r[Field.DEAD]['reason']}" for r in dead)
    filtered_by: Counter[str] = Counter(f"{r[Field.FILTERED]['stage']}:{r[Field.FILTERED]['reason']}" for r in filtered)
    shard_stats = {
        "shard": name, "shard_id": shard_id, "num_shards": num_shards,
        # read = every input sample of this shard; a duplicate key is a read sample dead-lettered here.
        "read": len(written) + len(dead) + len(filtered),
        "written": len(written), "dead_lettered": len(dead), "filtered": len(filtered),
        "dead_lettered_by_reason": dict(sorted(dead_by.items())),
        "filtered_by_reason": dict(sorted(filtered_by.items())),
        "counters": dict(sorted(stats.items())),
        # engine failures (dead letters and regions without negatives): a re-run retries this shard
        "retryable": sum(1 for r in dead if is_retryable(r))
        + sum(stats.get(f"negatives_invalid:{reason}", 0) for reason in sorted(RETRYABLE_REASONS)),
        "run": run_info,
    }
    atomic_write(fs, posixpath.join(root, name + STATS_SUFFIX),
                 json.dumps(shard_stats, sort_keys=True, indent=1).encode("utf-8"), durable=True)
    return shard_stats


class _WriteShardFn(beam.DoFn):
    def __init__(self, output: str, run_info: dict[str, Any]):
        self.output, self.run_info = output, run_info

    def process(self, element: tuple[tuple[int, int], Iterable[dict[str, Any]]]) -> Iterable[dict[str, Any]]:
        (shard_id, num_shards), items = element
        yield write_shard(self.output, shard_id, num_shards, items, self.run_info)


class AssignShards(beam.PTransform):
    """Tag each record with ``Field.SHARD = (shard_id, num_shards)``.

    With ``num_shards`` decided up front (from the listing, or ``--num-shards``) this is a plain
    Map: records go on to the model stages as they are read. Without it the count of everything
    read decides (a global barrier: no record reaches a model stage before the whole input is read).
    """

    def __init__(self, samples_per_shard: int, num_shards: Optional[int] = None):
        super().__init__()
        self.samples_per_shard = samples_per_shard
        self.num_shards = num_shards

    def expand(self, records: beam.PCollection) -> beam.PCollection:
        sps, fixed = self.samples_per_shard, self.num_shards
        if fixed:
            def assign_fixed(rec: dict[str, Any]) -> dict[str, Any]:
                rec[Field.SHARD] = (shard_of(rec["key"], fixed), fixed)
                return rec

            return records | "Assign" >> beam.Map(assign_fixed)
        count = records | "Count" >> beam.combiners.Count.Globally()

        def assign(rec: dict[str, Any], n: int) -> dict[str, Any]:
            shards = num_shards_for(n, sps)
            rec[Field.SHARD] = (shard_of(rec["key"], shards), shards)
            return rec

        return records | "Assign" >> beam.Map(assign, n=beam.pvalue.AsSingleton(count))


class SkipCompleted(beam.PTransform):
    """Drop records whose shard already has its stats marker (resume)."""

    def __init__(self, done: set[int]):
        super().__init__()
        self.done = frozenset(done)

    def expand(self, records: beam.PCollection) -> beam.PCollection:
        done = self.done
        return records | "SkipDone" >> beam.Filter(lambda r: r[Field.SHARD][0] not in done)


class WriteShards(beam.PTransform):
    """All outcomes (written, dead, filtered), grouped by shard -> shard files; emits shard stats."""

    def __init__(self, output: str, run_info: dict[str, Any]):
        super().__init__()
        self.output, self.run_info = output, run_info

    def expand(self, outcomes: beam.PCollection) -> beam.PCollection:
        return (outcomes
                | "ByShard" >> beam.Map(lambda r: (r[Field.SHARD], r))
                | "Group" >> beam.GroupByKey()
                | "Write" >> beam.ParDo(_WriteShardFn(self.output, self.run_info)))
