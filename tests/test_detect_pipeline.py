"""DetectBoxes in a Beam TestPipeline: stub engine, and an engine that fails one sample."""
from __future__ import annotations

import io
from typing import Any

import apache_beam as beam
import pytest
from apache_beam.testing.test_pipeline import TestPipeline as BeamTestPipeline
from apache_beam.testing.util import assert_that, equal_to
from PIL import Image

from core.engines import Detector, EngineEntry, EngineSpec, stub_provenance
from core.record import SampleError
from stages.detect import DETECTORS
from transforms.detect import DetectBoxes

EXPRS = [{"short_expr": "a dog", "long_expr": "a dog on the left"},
         {"short_expr": "a cat", "long_expr": "a cat on the right"}]


class ScriptedDetector(Detector):
    """Fixed detections per image width; a 13px-wide image fails with a reason."""

    def __init__(self, spec: EngineSpec, **_: Any):
        self.provenance = stub_provenance("scripted-detector")

    def detect(self, images: list[Image.Image], expressions: list[list[str]]) -> list[Any]:
        out: list[Any] = []
        for im, exprs in zip(images, expressions):
            assert exprs == ["a dog", "a cat"]
            if im.width == 13:
                out.append(SampleError("detector_refused", "bad image"))
            else:  # two overlapping boxes (NMS keeps the 0.9), one below 0.4, one degenerate
                out.append([((0, 0, 50, 50), 0.8, 0), ((2, 2, 50, 50), 0.9, 1), ((60, 60, 90, 90), 0.39, 0),
                            ((70, 70, 60, 90), 0.95, 0)])
        return out


def build_scripted(spec: EngineSpec, **options: Any) -> ScriptedDetector:
    return ScriptedDetector(spec, **options)


def make_records(widths: tuple[int, ...]) -> list[dict[str, Any]]:
    out = []
    for i, w in enumerate(widths):
        buf = io.BytesIO()
        Image.new("RGB", (w, 100), "white").save(buf, format="PNG")
        out.append({"key": f"k{i}", "image_bytes": buf.getvalue(), "width": w, "height": 100,
                    "caption": "a dog and a cat", "_expressions": EXPRS})
    return out


def summary(rec: dict[str, Any]) -> tuple:
    dead = rec.get("_dead")
    return (rec["key"], [(r["short_expr"], r["bbox"]) for r in rec.get("bbox_info", [])],
            dead and (dead["stage"], dead["reason"]))


def test_a_failing_sample_is_dead_lettered_with_its_reason_and_the_others_get_regions(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(DETECTORS.entries, "scripted",
                        EngineEntry("test_detect_pipeline:build_scripted", False, False, "test engine"))
    with BeamTestPipeline() as p:
        out = (p | beam.Create(make_records((100, 13, 100))) | DetectBoxes(DETECTORS.resolve("scripted"), batch_size=3)
               | beam.Map(summary))
        box = [0.02, 0.02, 0.5, 0.5, 0.9]
        assert_that(out, equal_to([("k0", [("a cat", box)], None), ("k1", [], ("detect", "detector_refused")),
                                   ("k2", [("a cat", box)], None)]))


def test_detect_with_the_stub_engine_gives_every_record_regions_and_stub_provenance() -> None:
    with BeamTestPipeline() as p:
        out = (p | beam.Create(make_records((100, 80))) | DetectBoxes(EngineSpec("stub"), batch_size=2)
               | beam.Map(lambda r: (r["key"], len(r["bbox_info"]), r["provenance"]["bbox_info"]["stub"],
                                     r["provenance"]["bbox_info"]["conf"])))
        assert_that(out, equal_to([("k0", 1, True, 0.4), ("k1", 1, True, 0.4)]))


def _accelerator_hints(transform: beam.PTransform) -> set[bytes]:
    p = beam.Pipeline()
    _ = p | beam.Create(make_records((100,))) | transform
    proto = p.to_runner_api()
    return {v for env in proto.components.environments.values() for k, v in env.resource_hints.items()
            if "accelerator" in k}


def test_gpu_engines_carry_beams_accelerator_hint_and_cpu_engines_do_not() -> None:
    hint = "type:nvidia-l4;count:1;install-nvidia-driver"
    gpu = DETECTORS.resolve("yolo-world:/w/yolov8x-worldv2.pt#text=/w/clip")
    assert _accelerator_hints(DetectBoxes(gpu, accelerator=hint)) == {hint.encode()}
    assert _accelerator_hints(DetectBoxes(EngineSpec("stub"), accelerator=hint)) == set()
    assert _accelerator_hints(DetectBoxes(gpu)) == set()
