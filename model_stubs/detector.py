"""StubDetector: ground-truth boxes for expressions that name a scene object; generic otherwise."""
from __future__ import annotations

from typing import Any

from PIL import Image

from core.engines import Detector, EngineSpec, stub_provenance
from core.synthetic import COLOURS, PATTERNS, SHAPES, SIZES, scene_from_image

# (x1, y1, x2, y2) in pixels, score, index of the expression it answers
Detection = tuple[tuple[float, float, float, float], float, int]
_ATTRS = set(COLOURS) | set(PATTERNS) | set(SIZES)


def _matches(expression: str, obj: dict[str, Any]) -> bool:
    words = set(expression.lower().replace("-", " ").split())
    if obj["shape"] not in words:
        return False
    said = words & _ATTRS
    return said <= {obj["colour"], obj["pattern"], obj["size"]}


class StubDetector(Detector):
    def __init__(self, spec: EngineSpec, **_: Any):
        self.provenance = stub_provenance("detector-oracle")

    def detect(self, images: list[Image.Image], expressions: list[list[str]]) -> list[list[Detection]]:
        return [self._one(im, exprs) for im, exprs in zip(images, expressions)]

    @staticmethod
    def _one(image: Image.Image, expressions: list[str]) -> list[Detection]:
        scene = scene_from_image(image)
        if scene is None:
            # Generic: the first expression gets a central box just above the 0.4 threshold.
            if not expressions:
                return []
            w, h = image.size
            return [((w * 0.25, h * 0.25, w * 0.75, h * 0.75), 0.41, 0)]
        out: list[Detection] = []
        for i, expr in enumerate(expressions):
            if any(w in expr.lower().split() for w in SHAPES):
                for obj in scene["objects"]:
                    if _matches(expr, obj):
                        out.append((tuple(float(v) for v in obj["box"]), 0.9, i))
        return out


def build(spec: EngineSpec, **options: Any) -> StubDetector:
    return StubDetector(spec, **options)
