"""``finehard stats OUTPUT``: counts per stage and reason, regions per image, negatives valid rate."""
from __future__ import annotations

import json
import posixpath
import sys
from collections import Counter
from typing import Any, Optional

import fsspec

from core.record import NUM_NEGATIVES
from core.terminal import printable
from shards.read_back_cli import REPORT_NAME, stats_parser
from shards.metrics import in_chain_order
from shards.output import (STATS_GLOB, _read_json, is_stub, iter_samples, read_listed, read_shard_stats,
    reconcile_problem, report_skipped, shard_paths, summarise)

RECONCILED = {True: "reconciled", None: "no read counts: not checked"}


def _by_stage(by_reason: dict[str, int]) -> dict[str, dict[str, int]]:
    out: dict[str, dict[str, int]] = {}
    for stage_reason, n in sorted(by_reason.items()):
        stage, _, reason = stage_reason.partition(":")
        out.setdefault(stage, {})[reason] = n
    return out



def build_stats(output: str, skipped: Optional[list[str]] = None) -> dict[str, Any]:
    """The stats report of a run's OUTPUT folder (see module docstring); what could not be read of the
    shards is left out, one line each in ``skipped`` (``shards.output.iter_samples``)."""
    fs, root = fsspec.core.url_to_fs(output)
    stats = read_shard_stats(output)
    if not stats:
        raise FileNotFoundError(f"{output} holds no shard stats ({STATS_GLOB}); is it a `finehard shards` output?")
    total = summarise(stats, read_listed(output))
    regions_hist: Counter[int] = Counter()
    negs_valid = regions = stub_samples = 0
    engines: Counter[str] = Counter()
    for s in iter_samples(shard_paths(output), with_images=False, skipped=skipped):
        rec = s["record"]
        info = rec.get("bbox_info", [])
        regions_hist[len(info)] += 1
        regions += len(info)
        negs_valid += sum(1 for r in info if r.get("flag_short_neg") == 1
                          and len(r.get("short_expr_negs", {})) == NUM_NEGATIVES)
        stub_samples += is_stub(rec)
        for field, prov in sorted(rec.get("provenance", {}).items()):
            if isinstance(prov, dict):
                engines[f"{field}:{prov.get('model') or prov.get('engine')}"] += 1
    summary: Any = {}
    if fs.exists(posixpath.join(root, "summary.json")):
        try:
            summary = _read_json(fs, posixpath.join(root, "summary.json"))
        except (OSError, ValueError, RecursionError) as e:
            if skipped is not None:
                skipped.append(f"summary.json: not readable ({type(e).__name__}: {e})")
        if not isinstance(summary, dict):
            summary = {}
    seconds = summary.get("wall_seconds")
    counters = total["counters"]
    return {
        "output": output,
        "shards": total["shards"],
        "read": total["read"], "written": total["written"],
        "dead_lettered": total["dead_lettered"], "filtered": total["filtered"],
        "reconciled": total["reconciled"],
        "reconcile_problem": reconcile_problem(total["read"], total["accounted"]),
        "dead_lettered_by_stage": _by_stage(total["dead_lettered_by_reason"]),
        "filtered_by_stage": _by_stage(total["filtered_by_reason"]),
        "conversions": {k.split(":", 1)[1]: v for k, v in counters.items() if k.startswith("converted:")},
        "counters": counters,
        "regions_per_image": {str(k): v for k, v in sorted(regions_hist.items())},
        "regions": regions,
        "regions_with_valid_negatives": negs_valid,
        "negatives_valid_rate": round(negs_valid / regions, 4) if regions else None,
        "negatives_valid_rate_at_generation": total["negatives_valid_rate"],
        "stub_samples": stub_samples,
        "engines": dict(sorted(engines.items())),
        "wall_seconds": seconds,
        "samples_per_second": round(total["read"] / seconds, 3) if seconds else None,
        "stages": in_chain_order(summary.get("stage_metrics", {})),
        "config": total["engines"],
    }


def format_stats(report: dict[str, Any]) -> str:
    """The report as a few aligned lines for a terminal."""
    reconciled = RECONCILED.get(report["reconciled"]) or f"NOT RECONCILED: {report.get('reconcile_problem')}"
    lines = [f"{report['output']}: {report['shards']} shard(s)",
             f"  read {report['read']} = written {report['written']} + dead-lettered {report['dead_lettered']}"
             f" + filtered {report['filtered']}  ({reconciled})"]
    for title, key in (("dead-lettered", "dead_lettered_by_stage"), ("filtered", "filtered_by_stage")):
        for stage, reasons in report[key].items():
            for reason, n in reasons.items():
                lines.append(f"  {title:<14}{stage + ':' + reason:<36}{n:>8}")
    for what, n in report["conversions"].items():
        lines.append(f"  {'converted':<14}{what:<36}{n:>8}")
    hist = "  ".join(f"{k}:{v}" for k, v in report["regions_per_image"].items())
    lines.append(f"  regions per image  {hist}")
    rate = report["negatives_valid_rate"]
    lines.append(f"  regions {report['regions']}, with {NUM_NEGATIVES} valid negatives "
                 f"{report['regions_with_valid_negatives']} ({'n/a' if rate is None else f'{rate:.1%}'})")
    if report["stub_samples"]:
        lines.append(f"  STUB output in {report['stub_samples']} sample(s): not real data")
    if report["samples_per_second"]:
        lines.append(f"  throughput {report['samples_per_second']} samples/s over {report['wall_seconds']} s")
    for name, m in report.get("stages", {}).items():
        if m.get("requests"):  # a server engine (transforms.window): how busy its requests kept the server
            lines.append(f"  stage {name:<12}{m.get('samples', 0):>8} samples  {m['requests']} requests "
                         f"({m.get('failed_requests', 0)} failed), in flight {_num(m.get('in_flight_mean'))} on "
                         f"average, max {_num(m.get('in_flight_max'))} of {_limit(m)}, "
                         f"answer {_num(m.get('answer_latency_s'))} s, {_num(m.get('requests_per_second'))} "
                         f"requests/s per worker")
            continue
        rate = m.get("samples_per_model_second")
        lines.append(f"  stage {name:<12}{m.get('samples', 0):>8} samples  {m.get('model_seconds', 0):>9.3f} s in the "
                     f"engine ({'n/a' if rate is None else f'{rate:,.1f}/s'}), {m.get('batches', 0)} batches, "
                     f"load {m.get('load_seconds', 0):.3f} s")
    return "\n".join(printable(line) for line in lines)


def _limit(m: dict[str, Any]) -> str:
    """The window's limit: fixed, or adaptive (its time-weighted mean and the largest it reached)."""
    if m.get("adaptive"):
        return (f"an adaptive concurrency ({_num(m.get('concurrency_mean'))} on average, at most "
                f"{_num(m.get('concurrency'))})")
    return f"concurrency {_num(m.get('concurrency'))}"


def _num(v: Any) -> str:
    return "n/a" if v is None else f"{v:g}"


def stats_main(argv: list[str]) -> int:
    """``finehard stats OUTPUT``: print the report (``--write``: also OUTPUT/stats_report.json)."""
    args = stats_parser().parse_args(argv)
    skipped: list[str] = []
    try:
        report = build_stats(args.output, skipped)
    except (OSError, ValueError) as e:  # no shards; a read count that is not a small regular json file
        print(f"finehard stats: error: {printable(e)}", file=sys.stderr)
        return 2
    if args.write:
        fs, root = fsspec.core.url_to_fs(args.output)
        with fs.open(posixpath.join(root, REPORT_NAME), "wt", encoding="utf-8") as f:
            json.dump(report, f, indent=1, sort_keys=True, ensure_ascii=False)
    print(json.dumps(report, indent=1, sort_keys=True) if args.json else format_stats(report))
    return report_skipped("finehard stats", skipped, "could not be read (above); the counts leave them out")
