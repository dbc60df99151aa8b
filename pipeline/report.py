"""Seeing the data: ``finehard stats OUTPUT`` (counts, histograms) and ``finehard preview OUTPUT`` (HTML page).

Both read what a run left in OUTPUT: the ``shard-*_stats.json`` markers (counts per stage and
reason, counters) and the shards themselves (regions, negatives, provenance). The preview is one
self-contained HTML file: images are inline data URIs, boxes an SVG overlay, no script, no
network.
"""
from __future__ import annotations

import argparse
import base64
import html
import io
import json
import logging
import posixpath
import sys
import tarfile
import time
from collections import Counter
from typing import Any, Callable, Iterator, Optional

import apache_beam as beam
import fsspec
from PIL import Image

from core.record import METRICS_NAMESPACE, NUM_NEGATIVES

STAGE_ORDER = ("captioner", "expressions", "detector", "negatives")  # RunInference namespaces, chain order
SHARD_GLOB = "shard-*.tar"
STATS_GLOB = "shard-*_stats.json"
REPORT_NAME = "stats_report.json"
PROGRESS_LOG = logging.getLogger("finehard.progress")
IMAGE_EXTS = ("jpg", "jpeg", "png", "webp")
PREVIEW_MAX_SIDE = 512
BOX_COLOURS = ("#e6194b", "#3cb44b", "#4363d8", "#f58231", "#911eb4", "#42d4f4", "#f032e6", "#9a6324")


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
    for stage in stages.values():
        for k in ("model_seconds", "load_seconds"):
            if k in stage:
                stage[k] = round(stage[k], 3)
        secs = stage.get("model_seconds")
        stage["samples_per_model_second"] = round(stage.get("samples", 0) / secs, 1) if secs else None
    return in_chain_order(stages)


def in_chain_order(stages: dict[str, Any]) -> dict[str, Any]:
    """Stage entries in the chain's order (json files keep them sorted by name)."""
    order = {name: i for i, name in enumerate(STAGE_ORDER)}
    return dict(sorted(stages.items(), key=lambda kv: (order.get(kv[0], len(order)), kv[0])))


def shard_paths(output: str, names: Optional[list[str]] = None) -> list[str]:
    """Sorted shard URIs in ``output`` (only ``names`` — ``shard-00003`` or ``shard-00003.tar`` — when given)."""
    fs, root = fsspec.core.url_to_fs(output)
    proto = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
    prefix = "" if proto in ("file", "local") else f"{proto}://"
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


def _by_stage(by_reason: dict[str, int]) -> dict[str, dict[str, int]]:
    out: dict[str, dict[str, int]] = {}
    for stage_reason, n in sorted(by_reason.items()):
        stage, _, reason = stage_reason.partition(":")
        out.setdefault(stage, {})[reason] = n
    return out


def is_stub(record: dict[str, Any]) -> bool:
    """True when any field of the record came from a stub engine."""
    return any(isinstance(v, dict) and v.get("stub") for v in record.get("provenance", {}).values())


def build_stats(output: str) -> dict[str, Any]:
    """The stats report of a run's OUTPUT folder (see module docstring)."""
    from pipeline.run import summarise  # the same totals the run itself reports

    fs, root = fsspec.core.url_to_fs(output)
    stats = [_read_json(fs, p) for p in sorted(fs.glob(posixpath.join(root, STATS_GLOB)))]
    if not stats:
        raise FileNotFoundError(f"{output} holds no shard stats ({STATS_GLOB}); is it a `finehard shards` output?")
    total = summarise(stats)
    regions_hist: Counter[int] = Counter()
    negs_valid = regions = stub_samples = 0
    engines: Counter[str] = Counter()
    for s in iter_samples(shard_paths(output), with_images=False):
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
    summary = {}
    if fs.exists(posixpath.join(root, "summary.json")):
        summary = _read_json(fs, posixpath.join(root, "summary.json"))
    seconds = summary.get("wall_seconds") or sum(s.get("timing", {}).get("seconds", 0) for s in stats) or None
    counters = total["counters"]
    return {
        "output": output,
        "shards": total["shards"],
        "read": total["read"], "written": total["written"],
        "dead_lettered": total["dead_lettered"], "filtered": total["filtered"],
        "reconciled": total["reconciled"],
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
    lines = [f"{report['output']}: {report['shards']} shard(s)",
             f"  read {report['read']} = written {report['written']} + dead-lettered {report['dead_lettered']}"
             f" + filtered {report['filtered']}  ({'reconciled' if report['reconciled'] else 'NOT RECONCILED'})"]
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
        rate = m.get("samples_per_model_second")
        lines.append(f"  stage {name:<12}{m.get('samples', 0):>8} samples  {m.get('model_seconds', 0):>9.3f} s in the "
                     f"engine ({'n/a' if rate is None else f'{rate:,.1f}/s'}), {m.get('batches', 0)} batches, "
                     f"load {m.get('load_seconds', 0):.3f} s")
    return "\n".join(lines)


def stats_main(argv: list[str]) -> int:
    """``finehard stats OUTPUT``: print the report and write OUTPUT/stats_report.json."""
    parser = argparse.ArgumentParser(prog="finehard stats",
                                     description="Counts per stage and reason, regions per image, negatives "
                                                 "valid rate; also written to OUTPUT/stats_report.json.")
    parser.add_argument("output", help="a `finehard shards` --output folder (any fsspec URI)")
    parser.add_argument("--json", action="store_true", help="print the report as json instead of text")
    args = parser.parse_args(argv)
    try:
        report = build_stats(args.output)
    except FileNotFoundError as e:
        print(f"finehard stats: error: {e}", file=sys.stderr)
        return 2
    fs, root = fsspec.core.url_to_fs(args.output)
    with fs.open(posixpath.join(root, REPORT_NAME), "wt", encoding="utf-8") as f:
        json.dump(report, f, indent=1, sort_keys=True, ensure_ascii=False)
    print(json.dumps(report, indent=1, sort_keys=True, ensure_ascii=False) if args.json else format_stats(report))
    return 0


# --- preview -------------------------------------------------------------------------------------

def _data_uri(image: bytes, ext: str) -> str:
    """The image as a data URI, shrunk to at most PREVIEW_MAX_SIDE (boxes are normalised, so they still fit)."""
    mime = {"jpg": "jpeg", "jpeg": "jpeg", "png": "png", "webp": "webp"}[ext]
    try:
        im = Image.open(io.BytesIO(image))
        if max(im.size) > PREVIEW_MAX_SIDE:
            im = im.convert("RGB")
            im.thumbnail((PREVIEW_MAX_SIDE, PREVIEW_MAX_SIDE))
            buf = io.BytesIO()
            im.save(buf, format="JPEG", quality=85)
            image, mime = buf.getvalue(), "jpeg"
    except OSError:
        pass  # show the bytes as they are; the browser draws a broken image
    return f"data:image/{mime};base64,{base64.b64encode(image).decode('ascii')}"


def _overlay(record: dict[str, Any]) -> str:
    w, h = max(1, int(record.get("width") or 1)), max(1, int(record.get("height") or 1))
    font = w / 32  # ~12 px once the image is scaled to the card's width, whatever its pixel size
    line = w / 220
    parts = [f'<svg class="boxes" viewBox="0 0 {w} {h}" preserveAspectRatio="none">']
    for i, region in enumerate(record.get("bbox_info", [])):
        x1, y1, x2, y2, score = (list(region.get("bbox", [])) + [0, 0, 0, 0, 0])[:5]
        colour = BOX_COLOURS[i % len(BOX_COLOURS)]
        label = html.escape(f"{i + 1}. {region.get('short_expr', '')} {score:.2f}")
        x, y = x1 * w, y1 * h
        ty = y + font if y < font * 1.4 else y - font * 0.3
        # labels of boxes on the right half end at the box's right edge, so they stay in the image
        tx, anchor = (x2 * w - 2, "end") if x1 > 0.5 else (x + 2, "start")
        parts.append(
            f'<g class="region" data-short-expr="{html.escape(region.get("short_expr", ""))}" data-score="{score:.2f}">'
            f'<rect x="{x:.1f}" y="{y:.1f}" width="{(x2 - x1) * w:.1f}" height="{(y2 - y1) * h:.1f}" '
            f'fill="none" stroke="{colour}" stroke-width="{line:.2f}"/>'
            f'<text x="{tx:.1f}" y="{ty:.1f}" text-anchor="{anchor}" font-size="{font:.2f}" fill="{colour}" '
            f'stroke="#fff" stroke-width="{font / 6:.2f}" paint-order="stroke">{label}</text></g>')
    parts.append("</svg>")
    return "".join(parts)


def _regions_table(record: dict[str, Any]) -> str:
    rows = []
    for i, region in enumerate(record.get("bbox_info", [])):
        colour = BOX_COLOURS[i % len(BOX_COLOURS)]
        negs = region.get("short_expr_negs") or {}
        neg_items = "".join(f"<li>{html.escape(str(negs[k]))}</li>" for k in sorted(negs, key=lambda k: int(k)
                                                                                      if str(k).isdigit() else 0))
        ok = "ok" if region.get("flag_short_neg") == 1 else "no valid negatives"
        rows.append(
            f'<tr class="region-row"><td style="color:{colour}">{i + 1}</td>'
            f'<td><b class="short-expr">{html.escape(region.get("short_expr", ""))}</b><br>'
            f'<span class="long-expr">{html.escape(region.get("long_expr", ""))}</span></td>'
            f'<td><details open><summary>{len(negs)} negatives ({ok})</summary>'
            f'<ol class="negatives">{neg_items}</ol></details></td></tr>')
    if not rows:
        return '<p class="none">no regions</p>'
    return "<table class=\"regions\"><tr><th>#</th><th>expression (short / long)</th><th>hard negatives</th></tr>" \
           + "".join(rows) + "</table>"


def sample_card(sample: dict[str, Any]) -> str:
    """One sample as an HTML card: image with boxes, captions, expressions and negatives."""
    rec = sample["record"]
    badge = '<span class="badge stub" title="at least one field came from a stub engine">stub</span>' \
        if is_stub(rec) else ""
    image = ""
    if sample.get("image") is not None:
        image = (f'<div class="figure"><img alt="{html.escape(rec.get("key", ""))}" '
                 f'src="{_data_uri(sample["image"], sample["ext"])}">{_overlay(rec)}</div>')
    return (f'<section class="sample" data-key="{html.escape(sample["key"])}">'
            f'<h2>{html.escape(sample["key"])} {badge}</h2>{image}'
            f'<p class="meta">{rec.get("width")}×{rec.get("height")} · {html.escape(str(rec.get("f_path", "")))}</p>'
            f'<p><b>long caption</b> <span class="caption">{html.escape(rec.get("caption", ""))}</span></p>'
            f'<p><b>short caption</b> <span class="short-caption">{html.escape(rec.get("short_caption", ""))}</span></p>'
            f'{_regions_table(rec)}</section>')


PAGE_CSS = """
body{font:14px/1.4 system-ui,sans-serif;margin:16px;background:#f4f4f4;color:#222}
main{display:grid;grid-template-columns:repeat(auto-fill,minmax(380px,1fr));gap:14px}
.sample{background:#fff;border-radius:6px;padding:10px;box-shadow:0 1px 3px #0002;overflow-wrap:anywhere}
.sample h2{font-size:13px;margin:0 0 6px}
.figure{position:relative;line-height:0}
.figure img{width:100%;height:auto;display:block}
.figure svg{position:absolute;left:0;top:0;width:100%;height:100%}
.badge{font-size:11px;padding:1px 6px;border-radius:8px;color:#fff;background:#c0392b;vertical-align:middle}
.meta{color:#777;font-size:11px}
table.regions{border-collapse:collapse;width:100%;font-size:12px}
table.regions td,table.regions th{border-top:1px solid #eee;padding:3px;text-align:left;vertical-align:top}
ol.negatives{margin:2px 0;padding-left:18px}
"""


def render_preview(samples: list[dict[str, Any]], title: str, stats: Optional[dict[str, Any]] = None) -> str:
    """The whole self-contained page."""
    head = ""
    if stats:
        head = (f'<p class="summary">read {stats["read"]}, written {stats["written"]}, dead-lettered '
                f'{stats["dead_lettered"]}, filtered {stats["filtered"]}; showing {len(samples)} sample(s)</p>')
    return ("<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>{html.escape(title)}</title><style>{PAGE_CSS}</style></head><body>"
            f"<h1>{html.escape(title)}</h1>{head}<main>"
            + "".join(sample_card(s) for s in samples) + "</main></body></html>")


def preview_main(argv: list[str]) -> int:
    """``finehard preview OUTPUT --out preview.html [--n 24]``."""
    parser = argparse.ArgumentParser(prog="finehard preview",
                                     description="Write a self-contained HTML page of samples with their boxes, "
                                                 "captions, expressions and hard negatives.")
    parser.add_argument("output", help="a `finehard shards` --output folder (any fsspec URI)")
    parser.add_argument("--out", required=True, help="the HTML file to write")
    parser.add_argument("--n", type=int, default=24, help="how many samples (the first ones, in shard order)")
    parser.add_argument("--shards", nargs="*", default=None, help="only these shards (e.g. shard-00003)")
    args = parser.parse_args(argv)
    try:
        uris = shard_paths(args.output, args.shards)
    except FileNotFoundError as e:
        print(f"finehard preview: error: {e}", file=sys.stderr)
        return 2
    if not uris:
        print(f"finehard preview: error: no {SHARD_GLOB} in {args.output}", file=sys.stderr)
        return 2
    samples = []
    for s in iter_samples(uris):
        if len(samples) >= args.n:
            break
        samples.append(s)
    from pipeline.run import read_shard_stats, summarise

    stats = summarise(read_shard_stats(args.output))
    page = render_preview(samples, f"FineHARD preview — {args.output}", stats)
    with fsspec.open(args.out, "wt", encoding="utf-8") as f:
        f.write(page)
    print(f"wrote {args.out}: {len(samples)} sample(s), {len(page) // 1024} KiB")
    return 0


# --- progress on local runs ----------------------------------------------------------------------

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
