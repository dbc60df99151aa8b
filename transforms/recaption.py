"""Recaption: a VLM writes the long caption; the input's alt-text stays as ``short_caption``
(the stage's logic and engines: ``stages.caption``)."""
from __future__ import annotations

import functools
from typing import Any, Optional

import apache_beam as beam
from apache_beam.ml.inference.base import RunInference

from core.engines import EngineSpec
from stages.cache import model_cache
from stages.caption import CAPTIONERS, CaptionJob, apply_captioner
from transforms.common import gpu_resource_hints
from transforms.inference import EngineModelHandler
from transforms.window import BUILD_THREADS, WindowedStage, windowed


class Recaption(beam.PTransform):
    """Long caption per record from the engine named by ``spec``; ``engine_options`` go to its factory."""

    def __init__(self, spec: EngineSpec, batch_size: int = 8, max_chars: int = 4000,
                 engine_options: Optional[dict[str, Any]] = None, accelerator: Optional[str] = None,
                 cache_root: Optional[str] = None):
        super().__init__()
        self.spec, self.batch_size, self.max_chars = spec, batch_size, max_chars
        self.cache_root = cache_root
        self.engine_options = dict(engine_options or {})
        self.accelerator = accelerator

    def expand(self, records: beam.PCollection) -> beam.PCollection:
        hints = gpu_resource_hints(CAPTIONERS, self.spec, self.accelerator)
        if windowed(self.spec):  # a server: requests in flight across records, no batches
            job = functools.partial(CaptionJob, max_chars=self.max_chars, cache=model_cache(self.cache_root))
            # the image work (decode, resize, JPEG encode) on BUILD_THREADS threads: one would feed a server
            # only ~20 two-megapixel images a second
            step = beam.ParDo(WindowedStage(CAPTIONERS, self.spec, job, self.engine_options,
                                            build_threads=BUILD_THREADS))
            return records | "Caption" >> (step.with_resource_hints(**hints) if hints else step)
        handler = EngineModelHandler(CAPTIONERS, self.spec,
                                     functools.partial(apply_captioner, max_chars=self.max_chars,
                                                       cache=model_cache(self.cache_root)),
                                     batch_size=self.batch_size, engine_options=self.engine_options)
        infer = RunInference(handler)
        return records | "Caption" >> (infer.with_resource_hints(**hints) if hints else infer)
