"""Deterministic synthetic scenes: coloured, patterned shapes with known boxes.

Each scene's ground truth travels inside the JPEG itself (a COM marker holding
``finehard-scene:<json>``), so the stub engines can act as oracles whatever reader
brought the image in. Real images carry no such marker and get generic stub output.
"""
from __future__ import annotations

import io
import json
import random
from dataclasses import dataclass
from typing import Any

from PIL import Image, ImageDraw

SCENE_MARKER = b"finehard-scene:"

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (214, 39, 40),
    "green": (44, 160, 44),
    "blue": (31, 90, 200),
    "yellow": (240, 210, 30),
    "orange": (255, 127, 14),
    "purple": (128, 60, 170),
    "pink": (240, 120, 190),
    "brown": (140, 86, 45),
    "black": (20, 20, 20),
    "gray": (127, 127, 127),
}
SHAPES = ("circle", "square", "triangle", "diamond", "ring")
PATTERNS = ("plain", "striped", "dotted", "checkered")
SIZES = ("small", "large")
BACKGROUNDS = ((250, 250, 245), (235, 240, 250), (245, 235, 225), (230, 245, 230))
CANVAS_SIZES = ((256, 256), (320, 240), (240, 320), (384, 288))


@dataclass(frozen=True)
class SceneObject:
    shape: str
    colour: str
    pattern: str
    size: str
    box: tuple[int, int, int, int]  # pixel xyxy

    @property
    def expression(self) -> str:
        """The object's referring expression, as the oracle captioner writes it."""
        words = [self.size, self.colour] + ([self.pattern] if self.pattern != "plain" else []) + [self.shape]
        return "a " + " ".join(words)

    def to_json(self) -> dict[str, Any]:
        return {"shape": self.shape, "colour": self.colour, "pattern": self.pattern,
                "size": self.size, "box": list(self.box), "expr": self.expression}


def _position_phrase(box: tuple[int, int, int, int], width: int, height: int) -> str:
    cx, cy = (box[0] + box[2]) / 2 / width, (box[1] + box[3]) / 2 / height
    row = "top" if cy < 0.36 else "bottom" if cy > 0.64 else ""
    col = "left" if cx < 0.36 else "right" if cx > 0.64 else ""
    if row and col:
        return f"in the {row} {col} corner"
    if row:
        return f"at the {row}"
    if col:
        return f"on the {col}"
    return "in the center"


def _fill_pattern(draw: ImageDraw.ImageDraw, mask: Image.Image, canvas: Image.Image,
                  box: tuple[int, int, int, int], colour: tuple[int, int, int], pattern: str) -> None:
    """Paint ``colour`` with ``pattern`` through ``mask`` onto ``canvas``."""
    x1, y1, x2, y2 = box
    w, h = x2 - x1, y2 - y1
    tile = Image.new("RGB", (w, h), colour)
    td = ImageDraw.Draw(tile)
    light = tuple(min(255, c + 110) for c in colour)
    step = max(6, min(w, h) // 6)
    if pattern == "striped":
        for x in range(0, w, step):
            td.rectangle([x, 0, x + step // 2 - 1, h], fill=light)
    elif pattern == "dotted":
        r = max(1, step // 4)
        for y in range(step // 2, h, step):
            for x in range(step // 2, w, step):
                td.ellipse([x - r, y - r, x + r, y + r], fill=light)
    elif pattern == "checkered":
        for y in range(0, h, step):
            for x in range(0, w, step):
                if (x // step + y // step) % 2:
                    td.rectangle([x, y, x + step - 1, y + step - 1], fill=light)
    canvas.paste(tile, (x1, y1), mask.crop(box))


def _shape_mask(size: tuple[int, int], shape: str, box: tuple[int, int, int, int]) -> Image.Image:
    mask = Image.new("L", size, 0)
    d = ImageDraw.Draw(mask)
    x1, y1, x2, y2 = box
    if shape == "circle":
        d.ellipse(box, fill=255)
    elif shape == "square":
        d.rectangle(box, fill=255)
    elif shape == "triangle":
        d.polygon([((x1 + x2) / 2, y1), (x2, y2), (x1, y2)], fill=255)
    elif shape == "diamond":
        d.polygon([((x1 + x2) / 2, y1), (x2, (y1 + y2) / 2), ((x1 + x2) / 2, y2), (x1, (y1 + y2) / 2)], fill=255)
    elif shape == "ring":
        d.ellipse(box, fill=255)
        t = max(3, (x2 - x1) // 5)
        d.ellipse([x1 + t, y1 + t, x2 - t, y2 - t], fill=0)
    else:
        raise ValueError(f"unknown shape {shape!r}")
    return mask


def _overlaps(a: tuple[int, int, int, int], b: tuple[int, int, int, int], margin: int = 4) -> bool:
    return not (a[2] + margin <= b[0] or b[2] + margin <= a[0] or a[3] + margin <= b[1] or b[3] + margin <= a[1])


def make_scene(index: int, seed: int = 0, max_objects: int = 4) -> tuple[Image.Image, dict[str, Any]]:
    """Scene number ``index`` of the family ``seed``: the same arguments give the same pixels."""
    rng = random.Random(f"finehard-scene-{seed}-{index}")
    width, height = rng.choice(CANVAS_SIZES)
    canvas = Image.new("RGB", (width, height), rng.choice(BACKGROUNDS))
    draw = ImageDraw.Draw(canvas)
    objects: list[SceneObject] = []
    used: set[tuple[str, str]] = set()
    for _ in range(rng.randint(1, max_objects)):
        for _attempt in range(30):
            size = rng.choice(SIZES)
            side = int(min(width, height) * (rng.uniform(0.38, 0.5) if size == "large" else rng.uniform(0.16, 0.24)))
            x1, y1 = rng.randint(0, width - side - 1), rng.randint(0, height - side - 1)
            box = (x1, y1, x1 + side, y1 + side)
            shape, colour = rng.choice(SHAPES), rng.choice(list(COLOURS))
            if (shape, colour) in used or any(_overlaps(box, o.box) for o in objects):
                continue
            obj = SceneObject(shape, colour, rng.choice(PATTERNS), size, box)
            _fill_pattern(draw, _shape_mask((width, height), shape, box), canvas, box, COLOURS[colour], obj.pattern)
            objects.append(obj)
            used.add((shape, colour))
            break
    scene = {"version": 1, "seed": seed, "index": index, "width": width, "height": height,
             "objects": [o.to_json() for o in objects]}
    return canvas, scene


def long_caption(scene: dict[str, Any]) -> str:
    """The detailed caption an ideal captioner would write for ``scene``."""
    parts = []
    for o in scene["objects"]:
        box = tuple(o["box"])
        parts.append(f"{o['expr']} {_position_phrase(box, scene['width'], scene['height'])}")
    n = len(parts)
    count = {1: "one shape", 2: "two shapes", 3: "three shapes", 4: "four shapes"}.get(n, f"{n} shapes")
    body = parts[0] if n == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]
    return f"A simple drawing of {count} on a plain light canvas: {body}."


def short_caption(scene: dict[str, Any]) -> str:
    """Alt-text style caption: colours and shapes, no patterns, sizes or places."""
    names = [f"{o['colour']} {o['shape']}" for o in scene["objects"]]
    return " and ".join(names)


def encode_scene_jpeg(image: Image.Image, scene: dict[str, Any], quality: int = 90) -> bytes:
    buf = io.BytesIO()
    comment = SCENE_MARKER + json.dumps(scene, sort_keys=True, separators=(",", ":")).encode()
    image.save(buf, format="JPEG", quality=quality, comment=comment)
    return buf.getvalue()


def scene_from_image(image: Image.Image) -> dict[str, Any] | None:
    """The ground truth embedded by :func:`encode_scene_jpeg`, or None for any other image."""
    comment = image.info.get("comment")
    if isinstance(comment, str):
        comment = comment.encode("utf-8", "surrogateescape")
    if not comment or not comment.startswith(SCENE_MARKER):
        return None
    try:
        return json.loads(comment[len(SCENE_MARKER):])
    except ValueError:
        return None


def write_scenes(out_dir: str, n: int, seed: int = 0, manifest_name: str = "manifest.jsonl") -> str:
    """Write ``n`` scenes as JPEGs plus a jsonl manifest (``url``, ``caption``, ``key``); returns its path."""
    import os

    os.makedirs(out_dir, exist_ok=True)
    manifest = os.path.join(out_dir, manifest_name)
    with open(manifest, "w", encoding="utf-8") as mf:
        for i in range(n):
            image, scene = make_scene(i, seed)
            name = f"scene_{seed:02d}_{i:06d}.jpg"
            with open(os.path.join(out_dir, name), "wb") as f:
                f.write(encode_scene_jpeg(image, scene))
            mf.write(json.dumps({"url": name, "caption": short_caption(scene)}) + "\n")
    return manifest
