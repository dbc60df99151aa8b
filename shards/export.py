"""Exports of curated shards to the layouts other code reads.

``finehard export-fgclip OUTPUT --to DIR``: the layout upstream FG-CLIP's stage-2 loader reads
(360CVGroup/FG-CLIP v1.0, ``LazySupervisedBboxDataset``). One JSON file per shard,
``DIR/jsonfiles/<shard>.json``, each a JSON array of records (upstream ``json.load``s every
``*.json``/``*.jsonl`` of a ``--data_path`` folder, so a file must be one array, not JSON lines);
``DIR/finehard_files.txt`` lists those files for a ``.txt`` ``--data_path``. Images are extracted to
``DIR/images/``. Upstream opens ``os.path.join(--image_folder, f_path)``: for a local ``DIR`` the
``f_path`` written is absolute, so it resolves from any working directory and whatever
``--image_folder`` is given (``os.path.join`` keeps an absolute second part; the flag must still be
set, e.g. ``--image_folder /``). For a remote ``DIR`` (or with ``--relative-paths``) ``f_path`` is
``images/<key>.<ext>``, relative to ``DIR``: point ``--image_folder`` at a local copy of ``DIR``.
Records are streamed: one sample is held at a time. The other fields (``caption``,
``short_caption``, ``bbox_info`` with normalised xyxy+score boxes, ``width``, ``height``) are the
shard record's; ``source_f_path`` keeps the original URI.

``finehard export-fgovd OUTPUT --to FILE.jsonl [--shards ...]``: evaluation lines in the format of
upstream's ``data/fgovd/*.jsonl`` (what its ``fgclip/eval/fgovd_eval.py`` and ``finehard eval --fgovd``
read), one per region that has 10 valid negatives: ``img_path`` (relative to the jsonl's folder:
``finehard eval --images``, upstream ``--image-folder``), ``bbox`` in pixels ``[x, y, w, h]``,
``pos_expression`` (a one-text list), ``neg_expression`` (the 10 negatives), ``category_id`` 0,
``neg_category_ids`` 1..10, ``width``, ``height``, ``image_id`` and ``sent_id`` (running numbers) and
``test_type``. Pick held-out shards with ``--shards`` so evaluation never sees training images.
"""
from __future__ import annotations

import json
import os
import posixpath
import sys
from typing import Any, Iterator, Optional

import fsspec

from core.record import NUM_NEGATIVES
from core.terminal import printable
from shards.read_back_cli import EXPORT_IMAGES_DIR, export_fgclip_parser, export_fgovd_parser
from shards.output import iter_samples, report_skipped, run_output_clash, shard_paths

JSON_DIR = "jsonfiles"
FGCLIP_LIST = "finehard_files.txt"  # the .txt form of --data_path: one json file path a line
IMAGES_DIR = EXPORT_IMAGES_DIR
FGOVD_TEST_TYPE = "finehard_short_expr_negs"


def _write(path: str, data: bytes) -> None:
    with fsspec.open(path, "wb") as f:
        f.write(data)


def _shards(output: str, shards: Optional[list[str]]) -> list[str]:
    uris = shard_paths(output, shards)
    if not uris:
        raise FileNotFoundError(f"no shard-*.tar in {output}")
    return uris


def _samples(output: str, shards: Optional[list[str]], skipped: Optional[list[str]] = None) -> Iterator[dict[str, Any]]:
    yield from iter_samples(_shards(output, shards), skipped=skipped)


def _is_local(path: str) -> bool:
    fs, _ = fsspec.core.url_to_fs(path)
    protocols = (fs.protocol,) if isinstance(fs.protocol, str) else tuple(fs.protocol)
    return bool({"file", "local"} & set(protocols))


def _local_path(path: str) -> str:
    return os.path.abspath(path[len("file://"):] if path.startswith("file://") else path)


def fgclip_record(sample: dict[str, Any], image_path: str) -> dict[str, Any]:
    """The FG-CLIP training item of one shard sample (``f_path`` = ``image_path``)."""
    rec = dict(sample["record"])
    rec["source_f_path"] = rec.get("f_path", "")
    rec["f_path"] = image_path
    return rec


def export_fgclip(output: str, to: str, shards: Optional[list[str]] = None,
                  relative_paths: bool = False, skipped: Optional[list[str]] = None) -> dict[str, int]:
    """Extract images and write one JSON array per shard under ``to/jsonfiles/``; returns counts.

    Shards are untrusted input (``shards.output.iter_samples``): a member whose name is a path out
    of ``to`` (absolute, ``..``) is never used; what is left out is listed in ``skipped``.
    """
    local = _is_local(to) and not relative_paths
    images = regions = 0
    listed = []
    for uri in _shards(output, shards):
        name = posixpath.basename(uri)[: -len(".tar")] + ".json"
        json_path = posixpath.join(to, JSON_DIR, name)
        with fsspec.open(json_path, "w", encoding="utf-8") as f:
            f.write("[")
            first = True
            for s in iter_samples([uri], skipped=skipped):
                rel = posixpath.join(IMAGES_DIR, f"{s['key']}.{s['ext']}")
                dest = posixpath.join(to, rel)
                _write(dest, s["image"])
                item = fgclip_record(s, _local_path(dest) if local else rel)
                f.write(("\n" if first else ",\n") + json.dumps(item, ensure_ascii=False))
                first = False
                images += 1
                regions += len(item.get("bbox_info") or [])
            f.write("\n]\n")
        listed.append(_local_path(json_path) if _is_local(to) else json_path)
    _write(posixpath.join(to, FGCLIP_LIST), "".join(p + "\n" for p in listed).encode("utf-8"))
    return {"images": images, "regions": regions, "json_files": len(listed)}


def coco_xywh(bbox: list[float], width: int, height: int) -> list[float]:
    """Normalised ``[x1, y1, x2, y2, (score)]`` -> COCO pixel ``[x, y, w, h]`` (2 decimals)."""
    x1, y1, x2, y2 = bbox[:4]
    return [round(x1 * width, 2), round(y1 * height, 2), round((x2 - x1) * width, 2), round((y2 - y1) * height, 2)]


def fgovd_lines(sample: dict[str, Any], img_path: str, image_id: int = 0, sent_id: int = 0) -> list[dict[str, Any]]:
    """Upstream-format FG-OVD lines for the regions of ``sample`` with exactly 10 negatives."""
    rec = sample["record"]
    lines = []
    for region in rec.get("bbox_info", []):
        negs = region.get("short_expr_negs") or {}
        if region.get("flag_short_neg") != 1 or len(negs) != NUM_NEGATIVES:
            continue
        lines.append({"img_path": img_path, "bbox": coco_xywh(region["bbox"], rec["width"], rec["height"]),
                      "pos_expression": [region["short_expr"]],
                      "neg_expression": [negs[str(k)] for k in range(NUM_NEGATIVES)],
                      "category_id": 0, "neg_category_ids": list(range(1, NUM_NEGATIVES + 1)),
                      "width": rec["width"], "height": rec["height"], "image_id": image_id,
                      "sent_id": sent_id + len(lines), "test_type": FGOVD_TEST_TYPE})
    return lines


def export_fgovd(output: str, to: str, shards: Optional[list[str]] = None,
                 images_dir: Optional[str] = None, skipped: Optional[list[str]] = None) -> dict[str, int]:
    """Write the eval jsonl ``to`` (streamed) and the images it names; returns counts (what is left out
    of the shards: ``skipped``, as in :func:`export_fgclip`)."""
    base = posixpath.dirname(to) or "."
    images_rel = images_dir or IMAGES_DIR
    images = n_lines = 0
    with fsspec.open(to, "w", encoding="utf-8") as f:
        for s in _samples(output, shards, skipped):
            rel = posixpath.join(images_rel, f"{s['key']}.{s['ext']}")
            lines = fgovd_lines(s, rel, image_id=images + 1, sent_id=n_lines)
            if lines:
                _write(posixpath.join(base, rel), s["image"])
                images += 1
                n_lines += len(lines)
                f.write("".join(json.dumps(x, ensure_ascii=False) + "\n" for x in lines))
    return {"images": images, "regions": n_lines}


def _refuse_output_files(output: str, to: str, flag: str) -> None:
    """An export never writes over what a run wrote (a shard, a marker, the lists)."""
    problem = run_output_clash(output, to)
    if problem:
        raise ValueError(f"{flag} {to} {problem}; give a path outside the run's files")


def _finish(command: str, skipped: list[str], sentence: str, counts: dict[str, Any], as_json: bool) -> int:
    print(json.dumps(counts) if as_json else sentence)
    return report_skipped(command, skipped, "could not be used (above) and are not in the export")


def export_fgclip_main(argv: list[str]) -> int:
    """``finehard export-fgclip OUTPUT --to DIR [--shards ...] [--relative-paths] [--json]``."""
    args = export_fgclip_parser().parse_args(argv)
    skipped: list[str] = []
    to = args.to.rstrip("/")
    try:
        _refuse_output_files(args.output, to, "--to")
        counts = export_fgclip(args.output, to, args.shards, args.relative_paths, skipped)
    except (FileNotFoundError, ValueError) as e:
        print(f"finehard export-fgclip: error: {printable(e)}", file=sys.stderr)
        return 2
    listing = posixpath.join(args.to, FGCLIP_LIST)
    sentence = (f"exported {counts['images']} image(s) with {counts['regions']} region(s) into {counts['json_files']} "
                f"json file(s) under {posixpath.join(args.to, JSON_DIR)}; train with --data_path {listing}")
    return _finish("finehard export-fgclip", skipped, printable(sentence),
                   {"to": posixpath.join(args.to, JSON_DIR), "list": listing, **counts}, args.json)


def export_fgovd_main(argv: list[str]) -> int:
    """``finehard export-fgovd OUTPUT --to FILE.jsonl [--shards ...] [--json]``."""
    args = export_fgovd_parser().parse_args(argv)
    skipped: list[str] = []
    try:
        _refuse_output_files(args.output, args.to, "--to")
        counts = export_fgovd(args.output, args.to, args.shards, args.images_dir, skipped)
    except (FileNotFoundError, ValueError) as e:
        print(f"finehard export-fgovd: error: {printable(e)}", file=sys.stderr)
        return 2
    sentence = (f"exported {counts['regions']} region(s) of {counts['images']} image(s) to {args.to}; evaluate "
                f"with finehard eval --fgovd {args.to}")
    return _finish("finehard export-fgovd", skipped, printable(sentence), {"to": args.to, **counts}, args.json)
