"""What a finished run leaves in OUTPUT, read back: shard URIs, samples, per-shard stats, the summary.

``finehard shards`` writes ``summary.json`` with :func:`write_summary`; ``finehard stats``,
``finehard preview`` and the exports read the same files through the functions here.
"""
from __future__ import annotations

import fnmatch
import json
import logging
import os
import posixpath
import sys
import tarfile
from typing import Any, Callable, Iterator, Optional

import fsspec
from fsspec.implementations.local import LocalFileSystem

from core.files import atomic_write, open_regular, protocol_prefix, read_bounded, unsafe_member_problem
from core.record import IMAGE_EXTS, SampleError
from core.terminal import printable
from inputs.opening import open_input
from inputs.records import shard_record_problem
from shards.markers import READ_COUNTS_DIR, SHARD_PREFIX, STATS_SUFFIX, read_marker

LOG = logging.getLogger("finehard")
MAX_RECORD_BYTES = 64 << 20  # a shard's .json member: a caption and regions, far below this
MAX_SMALL_FILE_BYTES = 16 << 20  # summary.json, read counts: a few KiB

SHARD_GLOB = f"{SHARD_PREFIX}-*.tar"
STATS_GLOB = f"{SHARD_PREFIX}-*{STATS_SUFFIX}"


def shard_paths(output: str, names: Optional[list[str]] = None) -> list[str]:
    """Sorted shard URIs in ``output`` (only ``names`` — ``shard-00003`` or ``shard-00003.tar`` — when given)."""
    fs, root = fsspec.core.url_to_fs(output)
    prefix = protocol_prefix(fs)
    paths = sorted(fs.glob(posixpath.join(root, SHARD_GLOB)))
    if names:
        wanted = {n if n.endswith(".tar") else n + ".tar" for n in names}
        missing = wanted - {posixpath.basename(p) for p in paths}
        if missing:
            raise FileNotFoundError(f"no shard {sorted(missing)[0]} in {output}")
        paths = [p for p in paths if posixpath.basename(p) in wanted]
    return [prefix + p for p in paths]


def sample_problem(record: Any) -> Optional[str]:
    """What makes a shard's ``.json`` member unusable by stats, preview and the exports, or None: the
    curation reader's ``bad_shard_record`` rule (``inputs.records.shard_record_problem``), plus a
    pixel size where the record has regions."""
    if not isinstance(record, dict):
        return f"its .json is {type(record).__name__}, not an object"
    provenance = record.get("provenance", {})
    if not isinstance(provenance, dict):
        return f"provenance is a {type(provenance).__name__}, not an object"
    problem = shard_record_problem({"bbox_info": [], **record, "provenance": provenance})
    if problem is None and record.get("bbox_info"):
        for f in ("width", "height"):
            v = record.get(f)
            if not isinstance(v, int) or isinstance(v, bool) or v <= 0:
                return f"{f} is {str(v)[:50]}, not a positive pixel count"
    return problem


def iter_samples(shard_uris: list[str], with_images: bool = True,
                 skipped: Optional[list[str]] = None) -> Iterator[dict[str, Any]]:
    """Samples of the shards in order: ``{"key", "record", "ext", "image"}`` (image bytes only if asked).

    A shard may come from elsewhere: it is opened as the curation reader opens input (regular files
    only), and what cannot be used is skipped, with one line each in ``skipped`` (logged when it is
    None): a shard that is not a readable tar (a zero-byte file, a FIFO) or ends early, an unsafe
    member (``core.files.unsafe_member_problem``: its name is never used as a path), a ``.json``
    that is not JSON or not a valid record (:func:`sample_problem`), a sample without an image or
    without a ``.json``.
    """
    def skip(line: str) -> None:
        if skipped is None:
            LOG.warning("skipped %s", printable(line))
        else:
            skipped.append(line)

    for uri in shard_uris:
        shard = posixpath.basename(uri)
        current: dict[str, Any] = {}
        try:
            with open_input(uri) as f, tarfile.open(fileobj=f, mode="r|") as tar:
                for ti in tar:
                    if ti.isdir():
                        continue
                    problem = unsafe_member_problem(ti)
                    if problem:
                        skip(f"{shard}: member {ti.name!r}: {problem}")
                        continue
                    key = ti.name.partition(".")[0]
                    if current and current["key"] != key:
                        yield from _finished(shard, current, skip)
                        current = {}
                    current.setdefault("key", key)
                    _take_member(tar, ti, current, with_images)
        except (OSError, EOFError, tarfile.TarError, SampleError) as e:
            why = e.detail if isinstance(e, SampleError) else f"{type(e).__name__}: {e}"
            skip(f"{shard}: not a readable tar from here on ({why})")
        yield from _finished(shard, current, skip)


def _finished(shard: str, sample: dict[str, Any], skip: Callable[[str], None]) -> Iterator[dict[str, Any]]:
    """``sample`` of :func:`iter_samples` once all its members were read, or why it is skipped."""
    if not sample:
        return
    where = f"{shard}: sample {sample['key']!r}"
    if "bad" in sample:
        skip(f"{where}: {sample['bad']}")
    elif "record" not in sample:
        skip(f"{where}: has no .json member")
    elif "ext" not in sample:
        skip(f"{where}: has no image member")
    else:
        yield sample


def _take_member(tar: tarfile.TarFile, ti: tarfile.TarInfo, sample: dict[str, Any], with_images: bool) -> None:
    """Put member ``ti`` into ``sample``: its record (or why it is bad) or its image; other members are ignored."""
    ext = ti.name.partition(".")[2]
    if ext == "json":
        try:
            record = json.loads(tar.extractfile(ti).read(MAX_RECORD_BYTES + 1))
        except (ValueError, RecursionError) as e:
            sample["bad"] = f"its .json is not JSON ({type(e).__name__}: {str(e)[:100]})"
            return
        problem = sample_problem(record)
        if problem:
            sample["bad"] = problem
        else:
            sample["record"] = record
    elif ext in IMAGE_EXTS:
        sample["ext"] = ext
        if with_images:
            sample["image"] = tar.extractfile(ti).read()


def report_skipped(command: str, skipped: list[str], consequence: str, limit: int = 20) -> int:
    """The lines :func:`iter_samples` left in ``skipped``, on stderr (at most ``limit``, then a count), and
    one error line: ``N part(s) of the shards <consequence>``. The command's exit code: 1 when anything was
    skipped, else 0."""
    if not skipped:
        return 0
    for line in skipped[:limit]:
        print(f"{command}: skipped {printable(line)}", file=sys.stderr)
    if len(skipped) > limit:
        print(f"{command}: ... and {len(skipped) - limit} more skipped", file=sys.stderr)
    print(f"{command}: error: {len(skipped)} part(s) of the shards {consequence}", file=sys.stderr)
    return 1


def _read_json(fs: fsspec.AbstractFileSystem, path: str, limit: int = MAX_SMALL_FILE_BYTES) -> Any:
    """A small json file of OUTPUT (regular files only, at most ``limit`` bytes: ValueError past it)."""
    return json.loads(read_bounded(fs, path, limit))



def is_stub(record: dict[str, Any]) -> bool:
    """True when any field of the record came from a stub engine."""
    return any(isinstance(v, dict) and v.get("stub") for v in record.get("provenance", {}).values())



def read_shard_stats(output: str) -> list[dict[str, Any]]:
    """The complete stats markers in ``output`` (a corrupt one counts as missing)."""
    fs, root = fsspec.core.url_to_fs(output)
    stats = []
    for p in sorted(fs.glob(posixpath.join(root, f"{SHARD_PREFIX}-*{STATS_SUFFIX}"))):
        marker = read_marker(fs, p)
        if marker is not None:
            stats.append(marker)
    return stats


def read_listed(output: str) -> Optional[int]:
    """How many input items the read stage listed (``read_counts/``), or None when the run left no counts."""
    fs, root = fsspec.core.url_to_fs(output)
    paths = fs.glob(posixpath.join(root, READ_COUNTS_DIR, "*.json"))
    if not paths:
        return None
    total = 0
    for p in paths:
        try:
            total += int(_read_json(fs, p)["items"])
        except (KeyError, TypeError) as e:
            raise ValueError(f"{p} is not a read count ({type(e).__name__}: {e})") from None
    return total


def summarise(stats: list[dict[str, Any]], listed: Optional[int] = None) -> dict[str, Any]:
    """Totals over shard stats.

    ``read`` is ``listed``, the number of input items the read stage counted (kept apart from the
    records, see ``inputs.reader.read_and_count``); ``reconciled`` says it equals written +
    dead_lettered + filtered, the outcomes the shard writers counted. None when ``listed`` is not known.
    """
    total: dict[str, Any] = {"shards": len(stats), "read": listed, "written": 0, "dead_lettered": 0, "filtered": 0,
                             "dead_lettered_by_reason": {}, "filtered_by_reason": {}, "counters": {}}
    for s in stats:
        for k in ("written", "dead_lettered", "filtered"):
            total[k] += s[k]
        for k in ("dead_lettered_by_reason", "filtered_by_reason", "counters"):
            for reason, n in s[k].items():
                total[k][reason] = total[k].get(reason, 0) + n
    for k in ("dead_lettered_by_reason", "filtered_by_reason", "counters"):
        total[k] = dict(sorted(total[k].items()))
    c = total["counters"]
    invalid = sum(v for k, v in c.items() if k.startswith("negatives_invalid:"))
    regions = c.get("negatives_valid", 0) + invalid
    total["regions"] = c.get("regions", 0)
    total["negatives_valid_rate"] = round(c.get("negatives_valid", 0) / regions, 4) if regions else None
    total["accounted"] = total["written"] + total["dead_lettered"] + total["filtered"]
    total["reconciled"] = None if listed is None else listed == total["accounted"]
    total["retryable"] = sum(s.get("retryable", 0) for s in stats)
    total["engines"] = stats[0]["run"]["config"] if stats else {}
    return total


def run_output_clash(output: str, target: str) -> Optional[str]:
    """Why writing ``target`` would overwrite what a run wrote into ``output`` (a shard, a marker, the lists,
    the summary, the lock), or None. ``target`` a file or a folder to write into."""
    from shards.outdir import LOCK_NAME, RUN_OUTPUTS  # outdir imports the readers; only this needs it

    out_fs, out_root = fsspec.core.url_to_fs(output)
    to_fs, to_path = fsspec.core.url_to_fs(target)
    if type(out_fs) is not type(to_fs):
        return None
    if isinstance(out_fs, LocalFileSystem):
        out_root, to_path = os.path.realpath(out_root), os.path.realpath(to_path)
    rel = posixpath.relpath(to_path, out_root) if to_path.startswith(out_root.rstrip("/") + "/") else None
    if rel is None:
        return None
    first = rel.split("/", 1)[0]
    if any(fnmatch.fnmatchcase(first, pattern) for pattern in (*RUN_OUTPUTS, LOCK_NAME, ".model-cache")):
        return f"is a file of the run in {output} ({first})"
    return None


def reconcile_problem(read: Optional[int], accounted: int) -> Optional[str]:
    """Why ``read`` input items and ``accounted`` outcomes (written + dead-lettered + filtered) differ, in
    the direction they differ; None when they agree or nothing was counted."""
    if read is None or read == accounted:
        return None
    if accounted < read:
        return (f"{read} input items read, but written + dead-lettered + filtered = {accounted}: "
                f"{read - accounted} sample(s) were lost (a bug: please report it)")
    return (f"{read} input items read, but the shards' stats markers account for {accounted}: {accounted - read} "
            "more than were read (a marker over-counts: edited, or left by another run; nothing is missing "
            "from the count)")


SIZES_NAME = "sizes.json"


def write_summary(output: str, **extra: Any) -> dict[str, Any]:
    """``summary.json`` and ``sizes.json`` (shard file name -> samples, the img2dataset/open_clip
    convention, so ``--train-num-samples`` is not needed) from the shards' stats."""
    stats = read_shard_stats(output)
    summary = {**summarise(stats, read_listed(output)), **extra}
    fs, root = fsspec.core.url_to_fs(output)
    sizes = {f"{s['shard']}.tar": s["written"] for s in stats}
    atomic_write(fs, posixpath.join(root, SIZES_NAME), json.dumps(dict(sorted(sizes.items())), indent=1).encode())
    atomic_write(fs, posixpath.join(root, "summary.json"), json.dumps(summary, indent=1, sort_keys=True).encode())
    return summary


def _first_line(output: str, folder: str, match: Any) -> Optional[dict[str, Any]]:
    """The first json line under OUTPUT/folder/ for which ``match(line)`` holds."""
    fs, root = fsspec.core.url_to_fs(output)
    for p in sorted(fs.glob(posixpath.join(root, folder, "*.jsonl"))):
        for item in _json_lines(fs, p):
            if match(item):
                return item
    return None


def _json_lines(fs: fsspec.AbstractFileSystem, path: str) -> Iterator[dict[str, Any]]:
    """The json objects of one ``.jsonl`` list of OUTPUT; a list that is not a regular file (a FIFO left
    there) or cannot be read yields nothing, a line that is not a json object is passed over."""
    try:
        with open_regular(fs, path) as f:
            for line in f:
                try:
                    item = json.loads(line)
                except (ValueError, RecursionError):
                    continue
                if isinstance(item, dict):
                    yield item
    except OSError as e:
        LOG.warning("%s cannot be read: %s", path, e)


def failure_reason(summary: dict[str, Any], max_rate: float, output: str) -> Optional[str]:
    """One line saying why the run failed, or None: dead-lettered samples or invalid negatives above ``max_rate``.

    The line names the most frequent reason and the first such error as the engine gave it
    (from ``deadletter/`` or ``diagnostics/``), so "connection refused" is not a bare count.
    """
    read, dead = summary.get("read", 0), summary.get("dead_lettered", 0)
    if read and dead / read > max_rate:
        reasons = summary.get("dead_lettered_by_reason", {})
        top = max(reasons, key=reasons.get) if reasons else "?"
        stage, _, reason = top.partition(":")
        first = _first_line(output, "deadletter", lambda x: x.get("stage") == stage and x.get("reason") == reason)
        detail = f"; first: {first['detail']}" if first and first.get("detail") else ""
        return (f"{dead}/{read} samples dead-lettered ({100.0 * dead / read:.1f}% > --max-failure-rate {max_rate:g}), "
                f"mostly {top} ({reasons.get(top, 0)}){detail} (see {output.rstrip('/')}/deadletter/)")
    rate = summary.get("negatives_valid_rate")
    if rate is not None and 1.0 - rate > max_rate:
        counters = summary.get("counters", {})
        invalid = {k.split(":", 1)[1]: v for k, v in counters.items() if k.startswith("negatives_invalid:")}
        top = max(invalid, key=invalid.get) if invalid else "?"
        first = _first_line(output, "diagnostics", lambda x: x.get("stage") == "negatives" and x.get("reason") == top)
        detail = ""
        if first and first.get("detail"):
            detail = f"; first: {first['detail']}"
        elif first and first.get("raw_answer"):
            detail = f"; first answer: {str(first['raw_answer'])[:200]!r}"
        return (f"{100.0 * (1.0 - rate):.1f}% of regions got no valid negatives (> --max-failure-rate {max_rate:g}), "
                f"mostly {top} ({invalid.get(top, 0)}){detail} (see {output.rstrip('/')}/diagnostics/)")
    return None


def read_lines(output: str, folder: str, limit: Optional[int] = None) -> list[dict[str, Any]]:
    """Lines of OUTPUT/folder/*.jsonl (``deadletter``, ``filtered``, ``diagnostics``), in shard order."""
    fs, root = fsspec.core.url_to_fs(output)
    out: list[dict[str, Any]] = []
    for p in sorted(fs.glob(posixpath.join(root, folder, "*.jsonl"))):
        for item in _json_lines(fs, p):
            if limit is not None and len(out) >= limit:
                return out
            out.append(item)
    return out
