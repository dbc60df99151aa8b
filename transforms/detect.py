"""DetectBoxes: open-vocabulary boxes for the caption's expressions (the stage's logic, what the paper
specifies on top of the engine's raw detections, and the engines: ``stages.detect``)."""
from __future__ import annotations

import functools
from typing import Any, Optional

import apache_beam as beam
from apache_beam.ml.inference.base import RunInference

from core.engines import EngineSpec
from stages.cache import model_cache
from stages.detect import DETECTORS, apply_detector
from transforms.common import gpu_resource_hints
from transforms.inference import EngineModelHandler


class DetectBoxes(beam.PTransform):
    """Regions per record from the engine named by ``spec``; ``engine_options`` go to its factory."""

    def __init__(self, spec: EngineSpec, batch_size: int = 8, conf: float = 0.4, iou: float = 0.5,
                 max_regions: int = 8, engine_options: Optional[dict[str, Any]] = None,
                 accelerator: Optional[str] = None, cache_root: Optional[str] = None):
        super().__init__()
        self.cache_root = cache_root
        self.engine_options = dict(engine_options or {})
        self.accelerator = accelerator
        self.spec, self.batch_size = spec, batch_size
        self.conf, self.iou, self.max_regions = conf, iou, max_regions

    def expand(self, records: beam.PCollection) -> beam.PCollection:
        apply = functools.partial(apply_detector, conf=self.conf, iou=self.iou, max_regions=self.max_regions,
                                  cache=model_cache(self.cache_root))
        infer = RunInference(EngineModelHandler(DETECTORS, self.spec, apply, batch_size=self.batch_size,
                                                engine_options=self.engine_options))
        hints = gpu_resource_hints(DETECTORS, self.spec, self.accelerator)
        return records | "Detect" >> (infer.with_resource_hints(**hints) if hints else infer)
