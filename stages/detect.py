"""Detect's logic: open-vocabulary boxes for the caption's expressions (YOLO-World in production; the Beam
transform: ``transforms.detect.DetectBoxes``).

The engine returns raw detections ``((x1, y1, x2, y2) pixels, score, expression index)``; this
module owns what the paper specifies on top: keep confidence >= 0.4, drop degenerate boxes, NMS
across all of the image's expressions, cap the regions per image, normalise to [0,1] xyxy.
"""
from __future__ import annotations

from typing import Any, Optional, Sequence

from core.engines import Detection, Detector, EngineEntry, EngineRegistry
from core.record import Field
from stages.cache import ModelCache, digest
from core.outcomes import bump
from stages.common import apply_image_engine
from core.spill import image_sha256

STAGE = "detect"

DETECTORS = EngineRegistry(STAGE, "detector", Detector, {
    "stub": EngineEntry("model_stubs.detector:build", False, False,
                        "ground-truth boxes on synthetic scenes, one generic box otherwise; marked stub"),
    "yolo-world": EngineEntry("stages.engines.yolo_world:build", True, True,
                              "ultralytics YOLO-World weights + a local CLIP text encoder: "
                              "yolo-world:/w/yolov8x-worldv2.pt#text=/w/clip-vit-base-patch32"),
})


def _iou(a: Sequence[float], b: Sequence[float]) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def select_regions(detections: list[Detection], expressions: list[dict[str, Any]], width: int, height: int,
                   conf: float = 0.4, iou: float = 0.5, max_regions: int = 8) -> list[dict[str, Any]]:
    """Threshold, clip, drop degenerate, NMS across expressions, cap, normalise: the ``bbox_info`` list."""
    kept: list[tuple[tuple[float, float, float, float], float, int]] = []
    for box, score, idx in detections:
        if score < conf or not 0 <= idx < len(expressions):
            continue
        x1, y1, x2, y2 = (float(v) for v in box)
        x1, x2 = max(0.0, min(x1, width)), max(0.0, min(x2, width))
        y1, y2 = max(0.0, min(y1, height)), max(0.0, min(y2, height))
        if x2 - x1 < 1 or y2 - y1 < 1:  # inverted, zero-area or wholly outside the image
            continue
        kept.append(((x1, y1, x2, y2), float(score), idx))
    # Highest score first; ties broken by position so the result does not depend on input order.
    kept.sort(key=lambda d: (-d[1], d[2], d[0]))
    selected: list[tuple[tuple[float, float, float, float], float, int]] = []
    for d in kept:
        if all(_iou(d[0], s[0]) <= iou for s in selected):
            selected.append(d)
        if len(selected) >= max_regions:
            break
    regions = []
    for (x1, y1, x2, y2), score, idx in selected:
        e = expressions[idx]
        regions.append({
            "bbox": [round(x1 / width, 6), round(y1 / height, 6), round(x2 / width, 6), round(y2 / height, 6),
                     round(score, 4)],
            "short_expr": e["short_expr"], "long_expr": e["long_expr"],
            "flag_short_neg": 0, "short_expr_negs": {},
        })
    return regions


def _expressions(rec: dict[str, Any]) -> list[str]:
    return [e["short_expr"] for e in rec.get(Field.EXPRESSIONS, [])]


def valid_detections(dets: Any) -> bool:
    """True for a list of ``(box xyxy, score, expression index)`` with numbers where numbers belong."""
    def number(v: Any) -> bool:
        return isinstance(v, (int, float)) and not isinstance(v, bool)

    return isinstance(dets, (list, tuple)) and all(
        isinstance(d, (list, tuple)) and len(d) == 3 and isinstance(d[0], (list, tuple)) and len(d[0]) == 4
        and all(number(v) for v in d[0]) and number(d[1]) and isinstance(d[2], int) and not isinstance(d[2], bool)
        for d in dets)


def apply_detector(engine: Detector, records: list[dict], conf: float, iou: float, max_regions: int,
                   cache: Optional[ModelCache] = None) -> list[dict]:
    """Box every live record of the batch; per-sample engine failures mark the record dead.

    ``cache`` keeps the engine's raw detections (before conf/NMS/max_regions): see stages.cache.
    """
    def accept(rec: dict, dets: Any, provenance: dict[str, Any]) -> None:
        rec["bbox_info"] = select_regions(dets, rec.get(Field.EXPRESSIONS, []), rec["width"], rec["height"],
                                          conf, iou, max_regions)
        rec.setdefault("provenance", {})["bbox_info"] = {**provenance, "conf": conf, "iou": iou,
                                                         "max_regions": max_regions}
        bump(rec, "regions", len(rec["bbox_info"]))
        rec.pop(Field.EXPRESSIONS, None)  # read only here: the later stages and shuffles need not carry it

    return apply_image_engine(STAGE, engine, records, cache, lambda r: digest(image_sha256(r), *_expressions(r)),
                              lambda images, recs: engine.detect(images, [_expressions(r) for r in recs]),
                              keep=valid_detections, accept=accept)
