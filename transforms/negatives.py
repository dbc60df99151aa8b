"""GenerateNegatives: 10 hard negatives per region expression, cleaned and validated (how they are asked for,
judged and stored: ``stages.negatives``; what makes one usable: ``stages.negatives_validation``)."""
from __future__ import annotations

import functools
from typing import Any, Optional

import apache_beam as beam
from apache_beam.ml.inference.base import RunInference

from core.engines import EngineSpec
from stages.cache import model_cache
from stages.negatives import NEGATIVE_ENGINES, PARSE_BATCH, NegativesJob, apply_negatives, parse_expressions
from transforms.common import gpu_resource_hints
from transforms.inference import EngineModelHandler
from transforms.window import windowed, windowed_stage


class GenerateNegatives(beam.PTransform):
    def __init__(self, spec: EngineSpec, batch_size: int = 16, retries: int = 2,
                 engine_options: Optional[dict[str, Any]] = None, cache_root: Optional[str] = None,
                 accelerator: Optional[str] = None):
        super().__init__()
        self.spec, self.batch_size, self.retries = spec, batch_size, retries
        self.engine_options = engine_options
        self.cache_root = cache_root
        self.accelerator = accelerator  # Beam's accelerator hint, for GPU engines only (vllm:)

    def expand(self, records: beam.PCollection) -> beam.PCollection:
        cache = model_cache(self.cache_root)
        if windowed(self.spec):  # a server: requests in flight across records, no batches
            job = functools.partial(NegativesJob, retries=self.retries, cache=cache)
            # records in batches, whose expressions are parsed together (parse_expressions): one nlp.pipe of a
            # hundred phrases costs less than half as much per phrase as a record's own two or three
            return records | "Negatives" >> windowed_stage(NEGATIVE_ENGINES, self.spec, job, self.engine_options,
                                                           prepare=parse_expressions, batch=PARSE_BATCH)
        apply = functools.partial(apply_negatives, retries=self.retries, cache=cache)
        infer = RunInference(EngineModelHandler(NEGATIVE_ENGINES, self.spec, apply, batch_size=self.batch_size,
                                                engine_options=self.engine_options))
        hints = gpu_resource_hints(NEGATIVE_ENGINES, self.spec, self.accelerator)
        return records | "Negatives" >> (infer.with_resource_hints(**hints) if hints else infer)
