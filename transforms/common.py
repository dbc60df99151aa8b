"""The Beam side every stage shares: routing records marked dead or filtered (``core.outcomes``) to side
outputs, and the accelerator hint of a GPU engine's step."""
from __future__ import annotations

from typing import Any, Iterable, Optional

import apache_beam as beam

from core.engines import EngineRegistry, EngineSpec
from core.record import Field, METRICS_NAMESPACE

DEAD = "dead"
FILTERED = "filtered"


class SplitOutcomes(beam.DoFn):
    """Route records marked dead/filtered to tagged outputs; the rest go on."""

    def __init__(self, stage: str):
        self.stage = stage

    def setup(self) -> None:
        self._ok = beam.metrics.Metrics.counter(METRICS_NAMESPACE, f"{self.stage}_ok")
        self._dead = beam.metrics.Metrics.counter(METRICS_NAMESPACE, f"{self.stage}_dead_lettered")
        self._filtered = beam.metrics.Metrics.counter(METRICS_NAMESPACE, f"{self.stage}_filtered")

    def process(self, record: dict[str, Any]) -> Iterable[Any]:
        if Field.DEAD in record:
            self._dead.inc()
            yield beam.pvalue.TaggedOutput(DEAD, record)
        elif Field.FILTERED in record:
            self._filtered.inc()
            yield beam.pvalue.TaggedOutput(FILTERED, record)
        else:
            self._ok.inc()
            yield record


def split_outcomes(pcoll: beam.PCollection, stage: str) -> tuple[beam.PCollection, beam.PCollection, beam.PCollection]:
    """``(ok, dead, filtered)`` of a PCollection of records."""
    out = pcoll | f"Split{stage.title()}" >> beam.ParDo(SplitOutcomes(stage)).with_outputs(DEAD, FILTERED, main="ok")
    return out.ok, out[DEAD], out[FILTERED]


def gpu_resource_hints(registry: EngineRegistry, spec: EngineSpec, accelerator: Optional[str]) -> dict[str, str]:
    """Beam's accelerator hint (e.g. ``type:nvidia-l4;count:1;install-nvidia-driver``) for GPU engines only."""
    return {"accelerator": accelerator} if accelerator and registry.entry(spec).gpu else {}

