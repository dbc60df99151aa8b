"""Exports of curated shards to the layouts other code reads.

``finehard export-fgclip OUTPUT --to DIR``: the json-list layout of the upstream FG-CLIP training
code (FineHARD json files): ``DIR/finehard.json`` is a list of records whose ``f_path`` is
relative to ``DIR`` (give the trainer ``--image_folder DIR``) and points at an extracted image
under ``DIR/images/``; ``DIR/finehard_files.txt`` lists the json for a ``.txt`` --data_path. The other fields
(``caption``, ``short_caption``, ``bbox_info`` with normalised xyxy+score boxes, ``width``,
``height``) are the shard record's. ``source_f_path`` keeps the original URI.

``finehard export-fgovd OUTPUT --to FILE.jsonl [--shards ...]``: FG-OVD-style evaluation lines,
one per region that has 10 valid negatives: ``img_path`` (relative to the jsonl's folder),
``bbox`` in COCO pixels ``[x, y, w, h]``, ``pos_expression`` and the ``neg_expression`` list.
Pick held-out shards with ``--shards`` so evaluation never sees training images.
"""
from __future__ import annotations

import argparse
import json
import posixpath
import sys
from typing import Any, Iterator, Optional

import fsspec

from core.record import NUM_NEGATIVES
from pipeline.output import iter_samples, shard_paths

FGCLIP_JSON = "finehard.json"
FGCLIP_LIST = "finehard_files.txt"  # the .txt form of --data_path: one json file path a line
IMAGES_DIR = "images"


def _write(path: str, data: bytes) -> None:
    with fsspec.open(path, "wb") as f:
        f.write(data)


def _samples(output: str, shards: Optional[list[str]]) -> Iterator[dict[str, Any]]:
    uris = shard_paths(output, shards)
    if not uris:
        raise FileNotFoundError(f"no shard-*.tar in {output}")
    yield from iter_samples(uris)


def fgclip_record(sample: dict[str, Any], image_rel: str) -> dict[str, Any]:
    """The FG-CLIP training item of one shard sample (``f_path`` = ``image_rel``)."""
    rec = dict(sample["record"])
    rec["source_f_path"] = rec.get("f_path", "")
    rec["f_path"] = image_rel
    return rec


def export_fgclip(output: str, to: str, shards: Optional[list[str]] = None) -> dict[str, int]:
    """Extract images and write ``to/finehard.json``; returns counts."""
    items, regions = [], 0
    for s in _samples(output, shards):
        rel = posixpath.join(IMAGES_DIR, f"{s['key']}.{s['ext']}")
        _write(posixpath.join(to, rel), s["image"])
        item = fgclip_record(s, rel)
        regions += len(item.get("bbox_info", []))
        items.append(item)
    json_path = posixpath.join(to, FGCLIP_JSON)
    _write(json_path, json.dumps(items, ensure_ascii=False, indent=1).encode("utf-8"))
    _write(posixpath.join(to, FGCLIP_LIST), (json_path + "\n").encode("utf-8"))
    return {"images": len(items), "regions": regions}


def coco_xywh(bbox: list[float], width: int, height: int) -> list[float]:
    """Normalised ``[x1, y1, x2, y2, (score)]`` -> COCO pixel ``[x, y, w, h]`` (2 decimals)."""
    x1, y1, x2, y2 = bbox[:4]
    return [round(x1 * width, 2), round(y1 * height, 2), round((x2 - x1) * width, 2), round((y2 - y1) * height, 2)]


def fgovd_lines(sample: dict[str, Any], img_path: str) -> list[dict[str, Any]]:
    """One FG-OVD eval line per region of ``sample`` with exactly 10 negatives."""
    rec = sample["record"]
    lines = []
    for i, region in enumerate(rec.get("bbox_info", [])):
        negs = region.get("short_expr_negs") or {}
        if region.get("flag_short_neg") != 1 or len(negs) != NUM_NEGATIVES:
            continue
        lines.append({"img_path": img_path, "key": rec["key"], "region": i,
                      "width": rec["width"], "height": rec["height"],
                      "bbox": coco_xywh(region["bbox"], rec["width"], rec["height"]),
                      "score": region["bbox"][4] if len(region["bbox"]) > 4 else None,
                      "pos_expression": region["short_expr"],
                      "neg_expression": [negs[str(k)] for k in range(NUM_NEGATIVES)]})
    return lines


def export_fgovd(output: str, to: str, shards: Optional[list[str]] = None,
                 images_dir: Optional[str] = None) -> dict[str, int]:
    """Write the eval jsonl ``to`` and the images it names; returns counts."""
    base = posixpath.dirname(to) or "."
    images_rel = images_dir or IMAGES_DIR
    out_lines, images = [], 0
    for s in _samples(output, shards):
        rel = posixpath.join(images_rel, f"{s['key']}.{s['ext']}")
        lines = fgovd_lines(s, rel)
        if lines:
            _write(posixpath.join(base, rel), s["image"])
            images += 1
            out_lines += lines
    _write(to, "".join(json.dumps(x, ensure_ascii=False) + "\n" for x in out_lines).encode("utf-8"))
    return {"images": images, "regions": len(out_lines)}


def _parser(prog: str, description: str, to_help: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description=description)
    parser.add_argument("output", help="a `finehard shards` --output folder (any fsspec URI)")
    parser.add_argument("--to", required=True, help=to_help)
    parser.add_argument("--shards", nargs="+", default=None,
                        help="only these shards (shard-00007 or shard-00007.tar); default: all")
    return parser


def export_fgclip_main(argv: list[str]) -> int:
    """``finehard export-fgclip OUTPUT --to DIR [--shards ...]``."""
    args = _parser("finehard export-fgclip", "Write the FG-CLIP training layout: DIR/finehard.json + DIR/images/.",
                   "destination folder").parse_args(argv)
    try:
        counts = export_fgclip(args.output, args.to.rstrip("/"), args.shards)
    except FileNotFoundError as e:
        print(f"finehard export-fgclip: error: {e}", file=sys.stderr)
        return 2
    print(json.dumps({"to": posixpath.join(args.to, FGCLIP_JSON), **counts}))
    return 0


def export_fgovd_main(argv: list[str]) -> int:
    """``finehard export-fgovd OUTPUT --to FILE.jsonl [--shards ...]``."""
    parser = _parser("finehard export-fgovd", "Write FG-OVD-style eval lines (one per region with 10 negatives) "
                                              "from held-out shards.", "the .jsonl file to write")
    parser.add_argument("--images-dir", default=None,
                        help=f"folder for the images, relative to the jsonl's folder (default {IMAGES_DIR})")
    args = parser.parse_args(argv)
    try:
        counts = export_fgovd(args.output, args.to, args.shards, args.images_dir)
    except FileNotFoundError as e:
        print(f"finehard export-fgovd: error: {e}", file=sys.stderr)
        return 2
    print(json.dumps({"to": args.to, **counts}))
    return 0
