"""``finehard preview OUTPUT --out page.html``: one self-contained HTML page of samples.

Images are inline data URIs, boxes an SVG overlay; no script, no network.
"""
from __future__ import annotations

import base64
import html
import io
import sys
from typing import Any, Optional

import fsspec
from PIL import Image

from core.terminal import printable
from shards.read_back_cli import preview_parser
from shards.output import (SHARD_GLOB, is_stub, iter_samples, read_lines, read_listed, read_shard_stats,
    report_skipped, run_output_clash, shard_paths, summarise)
from inputs.opening import read_limited

PREVIEW_MAX_SIDE = 512
MAX_FAILED_IMAGE_BYTES = 20 << 20  # a dead-lettered image bigger than this is not inlined
BOX_COLOURS = ("#e6194b", "#3cb44b", "#4363d8", "#f58231", "#911eb4", "#42d4f4", "#f032e6", "#9a6324")


def _esc(text: object) -> str:
    """Text of the page: control characters written out (``core.terminal.printable``), then HTML-escaped."""
    return html.escape(printable(text, keep_newlines=True))


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
        label = _esc(f"{i + 1}. {region.get('short_expr', '')} {score:.2f}")
        x, y = x1 * w, y1 * h
        ty = y + font if y < font * 1.4 else y - font * 0.3
        # labels of boxes on the right half end at the box's right edge, so they stay in the image
        tx, anchor = (x2 * w - 2, "end") if x1 > 0.5 else (x + 2, "start")
        parts.append(
            f'<g class="region" data-short-expr="{_esc(region.get("short_expr", ""))}" data-score="{score:.2f}">'
            f'<rect x="{x:.1f}" y="{y:.1f}" width="{(x2 - x1) * w:.1f}" height="{(y2 - y1) * h:.1f}" '
            f'fill="none" stroke="{colour}" stroke-width="{line:.2f}"/>'
            f'<text x="{tx:.1f}" y="{ty:.1f}" text-anchor="{anchor}" font-size="{font:.2f}" fill="{colour}" '
            f'stroke="#fff" stroke-width="{font / 6:.2f}" paint-order="stroke">{label}</text></g>')
    parts.append("</svg>")
    return "".join(parts)


def _regions_table(record: dict[str, Any], diagnostics: Optional[dict[tuple[str, str], dict]] = None) -> str:
    rows = []
    for i, region in enumerate(record.get("bbox_info", [])):
        colour = BOX_COLOURS[i % len(BOX_COLOURS)]
        negs = region.get("short_expr_negs") or {}
        neg_items = "".join(f"<li>{_esc(str(negs[k]))}</li>" for k in sorted(negs, key=lambda k: int(k)
                                                                                      if str(k).isdigit() else 0))
        ok = "ok" if region.get("flag_short_neg") == 1 else "no valid negatives"
        why = (diagnostics or {}).get((record.get("key", ""), region.get("short_expr", "")))
        if why and region.get("flag_short_neg") != 1:
            ok += f": {why.get('reason')}"
            for said in (why.get("detail"), f"answer: {why['raw_answer']}" if why.get("raw_answer") else ""):
                if said:  # why (e.g. "0 of 10 usable"), then what the model said
                    neg_items += f'<li class="why-invalid">{_esc(str(said)[:300])}</li>'
        rows.append(
            f'<tr class="region-row"><td style="color:{colour}">{i + 1}</td>'
            f'<td><b class="short-expr">{_esc(region.get("short_expr", ""))}</b><br>'
            f'<span class="long-expr">{_esc(region.get("long_expr", ""))}</span></td>'
            f'<td><details open><summary>{len(negs)} negatives ({ok})</summary>'
            f'<ol class="negatives">{neg_items}</ol></details></td></tr>')
    if not rows:
        return '<p class="none">no regions</p>'
    return "<table class=\"regions\"><tr><th>#</th><th>expression (short / long)</th><th>hard negatives</th></tr>" \
           + "".join(rows) + "</table>"


def sample_card(sample: dict[str, Any], diagnostics: Optional[dict[tuple[str, str], dict]] = None) -> str:
    """One sample as an HTML card: image with boxes, captions, expressions and negatives.

    ``diagnostics`` ((key, expression) -> OUTPUT/diagnostics line) says why a region has no negatives.
    """
    rec = sample["record"]
    badge = '<span class="badge stub" title="at least one field came from a stub engine">stub</span>' \
        if is_stub(rec) else ""
    image = ""
    if sample.get("image") is not None:
        image = (f'<div class="figure"><img alt="{_esc(rec.get("key", ""))}" '
                 f'src="{_data_uri(sample["image"], sample["ext"])}">{_overlay(rec)}</div>')
    return (f'<section class="sample" data-key="{_esc(sample["key"])}">'
            f'<h2>{_esc(sample["key"])} {badge}</h2>{image}'
            f'<p class="meta">{rec.get("width")}×{rec.get("height")} · {_esc(str(rec.get("f_path", "")))}</p>'
            f'<p><b>long caption</b> <span class="caption">{_esc(rec.get("caption", ""))}</span></p>'
            f'<p><b>short caption</b> <span class="short-caption">{_esc(rec.get("short_caption", ""))}</span></p>'
            f'{_regions_table(rec, diagnostics)}</section>')


def _failed_image(f_path: str) -> Optional[tuple[bytes, str]]:
    """The source image of a dead-lettered/filtered sample, when it can still be read as an image.

    It is read as the curation reader reads input (``inputs.opening.read_limited``): a regular file
    only (a FIFO or a device that was dead-lettered is not opened again), at most
    ``MAX_FAILED_IMAGE_BYTES``; http(s) sources are not fetched again (a preview needs no network).
    """
    if not f_path or "#" in f_path or f_path.lower().startswith(("http://", "https://")):
        return None  # a tar member or a manifest row (no file of its own), or a download
    try:
        data = read_limited(f_path, MAX_FAILED_IMAGE_BYTES)
        with Image.open(io.BytesIO(data)) as im:
            im.load()
            fmt = (im.format or "").lower()
    except Exception:  # noqa: BLE001 - unreadable is why many of them failed: show the text only
        return None
    ext = {"jpeg": "jpg", "png": "png", "webp": "webp"}.get(fmt)
    if ext is None:
        return None
    return data, ext


def failed_card(letter: dict[str, Any], kind: str) -> str:
    """A dead-lettered or filtered sample: key, stage, reason, detail, and the image when readable."""
    image = _failed_image(str(letter.get("f_path") or ""))
    figure = (f'<div class="figure"><img alt="{_esc(str(letter.get("key")))}" '
              f'src="{_data_uri(*image)}"></div>') if image else '<p class="none">(image not readable)</p>'
    return (f'<section class="sample failed {kind}" data-key="{_esc(str(letter.get("key")))}">'
            f'<h2>{_esc(str(letter.get("key")))} <span class="badge {kind}">{kind}</span></h2>{figure}'
            f'<p><b>stage</b> <span class="stage">{_esc(str(letter.get("stage")))}</span> · '
            f'<b>reason</b> <span class="reason">{_esc(str(letter.get("reason")))}</span></p>'
            f'<p class="detail">{_esc(str(letter.get("detail") or ""))}</p>'
            f'<p class="meta">{_esc(str(letter.get("f_path") or ""))}</p></section>')


PAGE_CSS = """
body{font:14px/1.4 system-ui,sans-serif;margin:16px;background:#f4f4f4;color:#222}
main{display:grid;grid-template-columns:repeat(auto-fill,minmax(380px,1fr));gap:14px}
.sample{background:#fff;border-radius:6px;padding:10px;box-shadow:0 1px 3px #0002;overflow-wrap:anywhere}
.sample h2{font-size:13px;margin:0 0 6px}
.figure{position:relative;line-height:0}
.figure img{width:100%;height:auto;display:block}
.figure svg{position:absolute;left:0;top:0;width:100%;height:100%}
.badge{font-size:11px;padding:1px 6px;border-radius:8px;color:#fff;background:#c0392b;vertical-align:middle}
.badge.filtered{background:#7f8c8d}
.detail{font-family:monospace;font-size:11px;color:#a33}
li.why-invalid{list-style:none;color:#a33;font-family:monospace;font-size:11px}
.meta{color:#777;font-size:11px}
table.regions{border-collapse:collapse;width:100%;font-size:12px}
table.regions td,table.regions th{border-top:1px solid #eee;padding:3px;text-align:left;vertical-align:top}
ol.negatives{margin:2px 0;padding-left:18px}
"""


def render_preview(samples: list[dict[str, Any]], title: str, stats: Optional[dict[str, Any]] = None,
                   failed: Optional[list[tuple[str, dict[str, Any]]]] = None,
                   diagnostics: Optional[dict[tuple[str, str], dict]] = None) -> str:
    """The whole self-contained page: written samples, then dead-lettered and filtered ones."""
    head = ""
    if stats:
        head = (f'<p class="summary">read {stats["read"]}, written {stats["written"]}, dead-lettered '
                f'{stats["dead_lettered"]}, filtered {stats["filtered"]}; showing {len(samples)} sample(s)</p>')
    return ("<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>{_esc(title)}</title><style>{PAGE_CSS}</style></head><body>"
            f"<h1>{_esc(title)}</h1>{head}<main>"
            + "".join(sample_card(s, diagnostics) for s in samples) + "</main>"
            + (f'<h1 id="failed">Dead-lettered and filtered ({len(failed)} shown)</h1><main>'
               + "".join(failed_card(letter, kind) for kind, letter in failed) + "</main>" if failed else "")
            + "</body></html>")


def preview_main(argv: list[str]) -> int:
    """``finehard preview OUTPUT --out preview.html [--n 24]``."""
    args = preview_parser().parse_args(argv)
    clash = run_output_clash(args.output, args.out)
    if clash:
        print(f"finehard preview: error: --out {printable(args.out)} {printable(clash)}; write the page elsewhere "
              "(e.g. preview.html)", file=sys.stderr)
        return 2
    try:
        uris = shard_paths(args.output, args.shards)
    except FileNotFoundError as e:
        print(f"finehard preview: error: {printable(e)}", file=sys.stderr)
        return 2
    if not uris:
        print(f"finehard preview: error: no {SHARD_GLOB} in {printable(args.output)}", file=sys.stderr)
        return 2
    samples: list[dict[str, Any]] = []
    skipped: list[str] = []
    for s in iter_samples(uris, skipped=skipped):
        if len(samples) >= args.n:
            break
        samples.append(s)
    try:
        listed = read_listed(args.output)
    except (OSError, ValueError) as e:  # a read count that is not a small regular json file
        skipped.append(f"read_counts: {e}")
        listed = None
    stats = summarise(read_shard_stats(args.output), listed)
    failed = [("dead-lettered", x) for x in read_lines(args.output, "deadletter", args.n_failed)] + \
             [("filtered", x) for x in read_lines(args.output, "filtered", args.n_failed)]
    diagnostics = {(d.get("key", ""), d.get("expression", "")): d for d in read_lines(args.output, "diagnostics")}
    page = render_preview(samples, f"FineHARD preview — {args.output}", stats, failed, diagnostics)
    with fsspec.open(args.out, "wt", encoding="utf-8") as f:
        f.write(page)
    print(printable(f"wrote {args.out}: {len(samples)} sample(s), {len(page) // 1024} KiB"))
    return report_skipped("finehard preview", skipped, "could not be read (above) and are not shown")
