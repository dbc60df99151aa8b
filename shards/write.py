"""Writing one shard: deterministic WebDataset tars, per-shard stats, dead-letter and filtered lists.

Membership comes from the key (``sha1(key) mod num_shards``, with ``num_shards`` from the number
of samples read), never from bundling. Each shard's samples are sorted by key and written with
fixed tar metadata to ``NAME.tar.inprogress``, renamed to ``NAME.tar`` when complete; the
dead-letter and filtered lists follow, and ``NAME_stats.json`` is written last: it is the
completion marker a re-run uses to skip the shard (``shards.markers``). On a local disk each file
is flushed to the device before its rename and its folder after it
(``core.files.atomic_open(durable=True)``), so the marker is never durable before the data it
vouches for (a power cut leaves no marker beside a torn tar). Every file's name and bytes follow
from the shard's records alone: a retried bundle (Dataflow retries failed bundles, Flink restarts
tasks) leaves the same files as one attempt. The Beam transforms that group records by shard and
call :func:`write_shard` are in ``transforms.write``.
"""
from __future__ import annotations

import hashlib
import io
import json
import math
import posixpath
import tarfile
from collections import Counter
from dataclasses import dataclass
from typing import IO, Any, Iterable

import fsspec
from fsspec.implementations.local import LocalFileSystem

from core.files import atomic_open, atomic_write, fsync_dir
from core.outcomes import mark_dead
from core.record import NEGATIVES_INVALID, PROJECT_VERSION, RETRYABLE_REASONS, Field, SampleError, public_fields
from core.spill import image_bytes
from shards.markers import DEADLETTER_DIR, DIAGNOSTICS_DIR, FILTERED_DIR, STATS_SUFFIX, shard_name

STAGE = "write"  # the stage a sample dead-lettered here is listed under
TAR_MTIME = 0.0  # fixed metadata: same input + engines => byte-identical tars

Records = list[dict[str, Any]]


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


def sort_outcomes(items: Iterable[dict[str, Any]]) -> tuple[Records, Records, Records]:
    """``(to write, dead-lettered, filtered)`` of a shard's records; those to write sorted by key.

    A second sample with a key already taken is dead-lettered (``duplicate_key``): a tar holds each
    key once.
    """
    ok: Records = []
    dead: Records = []
    filtered: Records = []
    for rec in items:
        (dead if Field.DEAD in rec else filtered if Field.FILTERED in rec else ok).append(rec)
    ok.sort(key=lambda r: (r["key"], r["f_path"]))
    written, seen = [], set()
    for rec in ok:
        if rec["key"] in seen:
            dead.append(mark_dead(rec, STAGE, "duplicate_key", "an earlier sample has this key"))
        else:
            seen.add(rec["key"])
            written.append(rec)
    return written, dead, filtered


def write_tar(fs: fsspec.AbstractFileSystem, tar_path: str, written: Records, dead: Records) -> Counter[str]:
    """Write ``written`` to ``tar_path``; returns the sum of their counters.

    A sample whose bytes cannot be read again (its source file changed since it was checked) is
    moved from ``written`` to ``dead`` and the tar is written again without it.
    """
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
            return stats
        except SampleError as e:  # a source file changed since it was checked: that sample is dead-lettered
            if current is None:
                raise
            written.remove(current)
            dead.append(mark_dead(current, STAGE, e.reason, e.detail))  # and the shard is written again without it


def write_lists(fs: fsspec.AbstractFileSystem, root: str, name: str, written: Records, dead: Records,
                filtered: Records) -> None:
    """The shard's dead-letter, filtered and diagnostics lists (a list left by an earlier attempt and
    empty now is removed)."""
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
            if isinstance(fs, LocalFileSystem):
                fsync_dir(posixpath.join(root, folder))


def shard_stats(shard_id: int, num_shards: int, written: Records, dead: Records, filtered: Records,
                counters: Counter[str], run_info: dict[str, Any]) -> dict[str, Any]:
    """The shard's stats marker (``NAME_stats.json``)."""
    dead_by: Counter[str] = Counter(f"{r[Field.DEAD]['stage']}:{r[Field.DEAD]['reason']}" for r in dead)
    filtered_by: Counter[str] = Counter(f"{r[Field.FILTERED]['stage']}:{r[Field.FILTERED]['reason']}" for r in filtered)
    return {
        "shard": shard_name(shard_id), "shard_id": shard_id, "num_shards": num_shards,
        # read = every input sample of this shard; a duplicate key is a read sample dead-lettered here.
        "read": len(written) + len(dead) + len(filtered),
        "written": len(written), "dead_lettered": len(dead), "filtered": len(filtered),
        "dead_lettered_by_reason": dict(sorted(dead_by.items())),
        "filtered_by_reason": dict(sorted(filtered_by.items())),
        "counters": dict(sorted(counters.items())),
        # engine failures (dead letters and regions without negatives): a re-run retries this shard
        "retryable": sum(1 for r in dead if is_retryable(r))
        + sum(counters.get(f"{NEGATIVES_INVALID}{reason}", 0) for reason in sorted(RETRYABLE_REASONS)),
        "run": run_info,
    }


def write_shard(output: str, shard_id: int, num_shards: int, items: Iterable[dict[str, Any]],
                run_info: dict[str, Any]) -> dict[str, Any]:
    """Write one shard and its lists; returns the shard's stats."""
    fs, root = fsspec.core.url_to_fs(output)
    name = shard_name(shard_id)
    written, dead, filtered = sort_outcomes(items)
    fs.makedirs(root, exist_ok=True)
    counters = write_tar(fs, posixpath.join(root, f"{name}.tar"), written, dead)
    write_lists(fs, root, name, written, dead, filtered)
    stats = shard_stats(shard_id, num_shards, written, dead, filtered, counters, run_info)
    atomic_write(fs, posixpath.join(root, name + STATS_SUFFIX),
                 json.dumps(stats, sort_keys=True, indent=1).encode("utf-8"), durable=True)
    return stats
