"""FineHARD-layout WebDataset shards built straight from ``core.synthetic`` scenes (tests, benchmarks).

Regions are the scene objects; ``short_expr`` is the object expression, ``long_expr`` adds its place,
and the 10 hard negatives swap one attribute (colour, pattern or size) while keeping the shape noun.
"""
from __future__ import annotations

import io
import os
import random
from typing import Any

import webdataset as wds

from core.record import negatives_mapping
from core.synthetic import COLOURS, PATTERNS, SIZES, encode_scene_jpeg, long_caption, make_scene, short_caption


def expression(size: str, colour: str, pattern: str, shape: str) -> str:
    """The synthetic referring expression for these attributes (same wording as core.synthetic)."""
    words = [size, colour] + ([pattern] if pattern != "plain" else []) + [shape]
    return "a " + " ".join(words)


def attribute_negatives(obj: dict[str, Any], rng: random.Random, n: int = 10) -> list[str]:
    """``n`` distinct expressions differing from ``obj`` in one attribute; the shape noun is kept."""
    s, c, p, sh = obj["size"], obj["colour"], obj["pattern"], obj["shape"]
    options = [expression(s, c2, p, sh) for c2 in COLOURS if c2 != c]
    options += [expression(s, c, p2, sh) for p2 in PATTERNS if p2 != p]
    options += [expression(s2, c, p, sh) for s2 in SIZES if s2 != s]
    rng.shuffle(options)
    return options[:n]


def _place(box: list[int], width: int, height: int) -> str:
    cx, cy = (box[0] + box[2]) / 2 / width, (box[1] + box[3]) / 2 / height
    row = "top" if cy < 0.36 else "bottom" if cy > 0.64 else "middle"
    col = "left" if cx < 0.36 else "right" if cx > 0.64 else "center"
    return f"in the {row} {col} of the picture"


def scene_record(scene: dict[str, Any], key: str, with_regions: bool = True, hard: bool = True,
                 seed: int = 0) -> dict[str, Any]:
    """The FineHARD json record of a synthetic scene."""
    rng = random.Random(f"negs-{key}-{seed}")
    w, h = scene["width"], scene["height"]
    regions = []
    for o in scene["objects"]:
        x1, y1, x2, y2 = o["box"]
        negs = attribute_negatives(o, rng) if hard else []
        regions.append({"bbox": [x1 / w, y1 / h, x2 / w, y2 / h, 1.0], "short_expr": o["expr"],
                        "long_expr": f"{o['expr']} {_place(o['box'], w, h)}",
                        "flag_short_neg": 1 if hard else 0, "short_expr_negs": negatives_mapping(negs) if hard else {}})
    rec = {"key": key, "f_path": f"synthetic://{key}.jpg", "caption": long_caption(scene),
           "short_caption": short_caption(scene), "width": w, "height": h,
           "provenance": {"engine": "synthetic-oracle"}}
    if with_regions:
        rec["bbox_info"] = regions
    return rec


def write_synthetic_shards(out_dir: str, n: int, seed: int = 0, per_shard: int = 16, start: int = 0,
                           with_regions: bool = True, hard_every: int = 1, image_format: str = "jpg") -> list[str]:
    """Write scenes ``start..start+n-1`` of family ``seed`` as shards; every ``hard_every``-th image has negatives."""
    import json

    os.makedirs(out_dir, exist_ok=True)
    paths = []
    for s in range(0, n, per_shard):
        path = os.path.join(out_dir, f"shard-{seed:02d}-{(start + s) // per_shard:06d}.tar")
        with wds.TarWriter(path, mtime=0) as tw:
            for i in range(start + s, start + min(n, s + per_shard)):
                image, scene = make_scene(i, seed)
                key = f"scene_{seed:02d}_{i:06d}"
                hard = hard_every > 0 and i % hard_every == 0
                rec = scene_record(scene, key, with_regions, hard, seed)
                if image_format == "jpg":
                    data = encode_scene_jpeg(image, scene)
                else:
                    buf = io.BytesIO()
                    image.save(buf, format=image_format.upper())
                    data = buf.getvalue()
                tw.write({"__key__": key, image_format: data, "json": json.dumps(rec).encode(),
                          "txt": rec["caption"].encode()})
        paths.append(path)
    return paths
