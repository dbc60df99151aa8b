"""StubCaptioner: the scene's ground-truth caption, or a generic one for real images."""
from __future__ import annotations

from typing import Any

from PIL import Image

from core.engines import Captioner, EngineSpec, stub_provenance
from core.synthetic import long_caption, scene_from_image


class StubCaptioner(Captioner):
    def __init__(self, spec: EngineSpec, **_: Any):
        self.provenance = stub_provenance("captioner-oracle")

    def caption(self, images: list[Image.Image]) -> list[str]:
        return [self._one(im) for im in images]

    @staticmethod
    def _one(image: Image.Image) -> str:
        scene = scene_from_image(image)
        if scene is not None and scene["objects"]:
            return long_caption(scene)
        w, h = image.size
        shape = "wide" if w > h * 1.2 else "tall" if h > w * 1.2 else "square"
        # Dominant colour of a thumbnail, so different photos get different (but generic) text. A JPEG is
        # decoded at a reduced scale (draft): the image was fully decoded once already, when it was read.
        image.draft("RGB", (max(1, w // 8), max(1, h // 8)))
        r, g, b = image.convert("RGB").resize((1, 1), Image.Resampling.BOX).getpixel((0, 0))
        tone = "bright" if (r + g + b) / 3 > 140 else "dark"
        hue = max((("red", r), ("green", g), ("blue", b)), key=lambda t: t[1])[0]
        return (f"A {shape} {tone} photograph with mostly {hue} tones, showing a main subject "
                f"in the center of the frame.")


def build(spec: EngineSpec, **options: Any) -> StubCaptioner:
    return StubCaptioner(spec, **options)
