"""What a finished run leaves in OUTPUT, read back: shard URIs, samples, per-shard stats, the summary.

``finehard shards`` writes ``summary.json`` with :func:`write_summary`; ``finehard stats``,
``finehard preview`` and the exports read the same files through the functions here.
"""
from __future__ import annotations

import json
import posixpath
import tarfile
from typing import Any, Iterator, Optional

import fsspec

from core.files import atomic_write, protocol_prefix
from core.record import IMAGE_EXTS, METRICS_NAMESPACE
from transforms.write import READ_COUNTS_DIR, SHARD_PREFIX, STATS_SUFFIX, read_marker

STAGE_ORDER = ("recaption", "expressions", "detect", "negatives")  # chain order
SHARD_GLOB = f"{SHARD_PREFIX}-*.tar"
STATS_GLOB = f"{SHARD_PREFIX}-*{STATS_SUFFIX}"


def stage_metrics(result: Any, namespace_prefix: str = f"{METRICS_NAMESPACE}_") -> dict[str, dict[str, Any]]:
    """Per model stage, from the runner's RunInference metrics: samples, seconds in the model, rate.

    Works on any runner whose result can be queried after ``wait_until_finish`` (FnApiRunner,
    Dataflow); an empty dict where the runner reports no metrics.
    """
    try:
        found = result.metrics().query()
    except Exception:  # noqa: BLE001 - a runner without metrics support: the report just lacks the section
        return {}

    def value(r: Any) -> Any:
        return r.committed if r.committed is not None else r.attempted

    stages: dict[str, dict[str, Any]] = {}
    for kind in ("counters", "distributions"):
        for r in found.get(kind, []):
            ns = r.key.metric.namespace
            if not ns.startswith(namespace_prefix):
                continue
            stage = stages.setdefault(ns[len(namespace_prefix):], {})
            v = value(r)
            if r.key.metric.name == "num_inferences":
                stage["samples"] = stage.get("samples", 0) + int(v or 0)
            elif r.key.metric.name == "inference_batch_latency_micro_secs" and v is not None:
                stage["model_seconds"] = stage.get("model_seconds", 0.0) + v.sum / 1e6
                stage["batches"] = stage.get("batches", 0) + v.count
            elif r.key.metric.name == "load_model_latency_milli_secs" and v is not None:
                stage["load_seconds"] = stage.get("load_seconds", 0.0) + v.sum / 1e3
            elif r.key.metric.name in WINDOW_COUNTERS and v is not None:  # transforms.window: a server engine
                name, scale = WINDOW_COUNTERS[r.key.metric.name]
                stage[name] = stage.get(name, 0) + v * scale
            elif r.key.metric.name in WINDOW_MAXIMA and v is not None and v.count:
                name = WINDOW_MAXIMA[r.key.metric.name]
                stage[name] = max(stage.get(name, 0), v.max)
    return finish_stage_metrics(stages)


# The request window's metrics (transforms.window.WindowedStage): summed over bundles and workers ...
WINDOW_COUNTERS = {"window_requests": ("requests", 1), "window_failed_requests": ("failed_requests", 1),
                   "window_answer_micros": ("answer_seconds", 1e-6), "window_busy_micros": ("busy_seconds", 1e-6),
                   "window_in_flight_micros": ("in_flight_seconds", 1e-6)}
# ... or their largest value
WINDOW_MAXIMA = {"window_in_flight_max": "in_flight_max", "window_concurrency": "concurrency"}
MAX_METRICS = frozenset(WINDOW_MAXIMA.values())
DERIVED_METRICS = frozenset({"samples_per_model_second", "answer_latency_s", "in_flight_mean", "requests_per_second"})


def finish_stage_metrics(stages: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Summed stage metrics, rounded, with their rate, in the chain's order."""
    for stage in stages.values():
        for k in ("model_seconds", "load_seconds", "answer_seconds", "busy_seconds", "in_flight_seconds"):
            if k in stage:
                stage[k] = round(stage[k], 3)
        secs = stage.get("model_seconds")
        stage["samples_per_model_second"] = round(stage.get("samples", 0) / secs, 1) if secs else None
        if stage.get("requests"):  # a server engine: what its request window saw
            busy = stage.get("busy_seconds") or 0.0
            stage["answer_latency_s"] = round(stage.get("answer_seconds", 0.0) / stage["requests"], 3)
            # time-weighted mean of requests in flight, and requests answered per second, per worker
            # process while it had any in flight
            stage["in_flight_mean"] = round(stage.get("in_flight_seconds", 0.0) / busy, 2) if busy else None
            stage["requests_per_second"] = round(stage["requests"] / busy, 2) if busy else None
    return in_chain_order(stages)


def in_chain_order(stages: dict[str, Any]) -> dict[str, Any]:
    """Stage entries in the chain's order (json files keep them sorted by name)."""
    order = {name: i for i, name in enumerate(STAGE_ORDER)}
    return dict(sorted(stages.items(), key=lambda kv: (order.get(kv[0], len(order)), kv[0])))


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


def iter_samples(shard_uris: list[str], with_images: bool = True) -> Iterator[dict[str, Any]]:
    """Samples of the shards in order: ``{"key", "record", "ext", "image"}`` (image bytes only if asked)."""
    for uri in shard_uris:
        current: dict[str, Any] = {}
        with fsspec.open(uri, "rb") as f, tarfile.open(fileobj=f, mode="r|") as tar:
            for ti in tar:
                if not ti.isfile():
                    continue
                key, _, ext = ti.name.partition(".")
                if current and current["key"] != key:
                    if "record" in current:
                        yield current
                    current = {}
                current.setdefault("key", key)
                if ext == "json":
                    current["record"] = json.loads(tar.extractfile(ti).read())
                elif ext in IMAGE_EXTS:
                    current["ext"] = ext
                    if with_images:
                        current["image"] = tar.extractfile(ti).read()
        if current.get("record") is not None:
            yield current



def _read_json(fs: fsspec.AbstractFileSystem, path: str) -> Any:
    with fs.open(path, "rt", encoding="utf-8") as f:
        return json.load(f)



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
        with fs.open(p, "rb") as f:
            total += int(json.loads(f.read())["items"])
    return total


def summarise(stats: list[dict[str, Any]], listed: Optional[int] = None) -> dict[str, Any]:
    """Totals over shard stats.

    ``read`` is ``listed``, the number of input items the read stage counted (kept apart from the
    records, see ``transforms.read.read_and_count``); ``reconciled`` says it equals written +
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
        with fs.open(p, "rt", encoding="utf-8") as f:
            for line in f:
                try:
                    item = json.loads(line)
                except ValueError:
                    continue
                if match(item):
                    return item
    return None


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
        with fs.open(p, "rt", encoding="utf-8") as f:
            for line in f:
                if limit is not None and len(out) >= limit:
                    return out
                try:
                    out.append(json.loads(line))
                except ValueError:
                    continue
    return out
