"""Regenerate the bundled sample: ``python -m pipeline.sample sample`` (what ``make sample`` runs).

24 synthetic scenes (ground truth embedded, see ``core.synthetic``), the photos already in
``sample/photos`` with their alt-texts, and one deliberately truncated JPEG so a first run shows
a dead-lettered sample. Everything is listed in ``sample/manifest.jsonl``.
"""
from __future__ import annotations

import json
import os
import sys

from core.synthetic import encode_scene_jpeg, make_scene, short_caption

NUM_SCENES = 24
PHOTO_ALT_TEXT = {
    "astronaut.jpg": "Astronaut Eileen Collins in her flight suit",
    "chelsea_the_cat.jpg": "Chelsea the cat",
    "coffee.jpg": "a cup of coffee on a saucer",
    "rocket.jpg": "rocket launch at Cape Canaveral",
}


def write_sample(root: str) -> str:
    os.makedirs(os.path.join(root, "scenes"), exist_ok=True)
    rows = []
    for i in range(NUM_SCENES):
        image, scene = make_scene(i, seed=0)
        name = f"scenes/scene_{i:03d}.jpg"
        with open(os.path.join(root, name), "wb") as f:
            f.write(encode_scene_jpeg(image, scene))
        rows.append({"url": name, "caption": short_caption(scene)})
    for name, alt in sorted(PHOTO_ALT_TEXT.items()):
        if os.path.exists(os.path.join(root, "photos", name)):
            rows.append({"url": f"photos/{name}", "caption": alt})
    # A truncated copy of scene 0: shows what a dead-lettered sample looks like.
    with open(os.path.join(root, "scenes/scene_000.jpg"), "rb") as f:
        data = f.read()
    with open(os.path.join(root, "broken_truncated.jpg"), "wb") as f:
        f.write(data[: len(data) // 3])
    rows.append({"url": "broken_truncated.jpg", "caption": "a deliberately truncated file"})
    manifest = os.path.join(root, "manifest.jsonl")
    with open(manifest, "w", encoding="utf-8") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)
    return manifest


if __name__ == "__main__":
    print(write_sample(sys.argv[1] if len(sys.argv) > 1 else "sample"))
