"""Pieces every stage shares: dead-letter marking, the engine ModelHandler, image opening.

Records flow between stages as plain dicts. A sample that fails a stage is not raised: the stage
sets ``record[Field.DEAD] = {"stage", "reason", "detail"}`` (or ``record[Field.FILTERED]``) and
:class:`SplitOutcomes` routes it to a side output, so one bad sample never fails a bundle and
every sample ends in exactly one of: written, dead-lettered, filtered.
"""
from __future__ import annotations

import io
import logging
import re
from typing import Any, Callable, Iterable, Optional, Sequence

import apache_beam as beam
from PIL import Image

from core.engines import Engine, EngineRegistry, EngineSpec
from core.record import Field, METRICS_NAMESPACE, SampleError, valid_text  # SampleError: re-exported
from transforms.cache import ModelCache, cached_answers
from transforms.spill import image_bytes

LOG = logging.getLogger(__name__)

DEAD = "dead"
FILTERED = "filtered"


_ADDRESS = re.compile(r" (?:object )?at 0x[0-9a-fA-F]+")


def stable_detail(detail: object) -> str:
    """A failure's detail as the run writes it: valid text (it often quotes a path or an input value,
    escaped so the letter can be written), at most 500 characters, no memory addresses
    (``<_io.BytesIO object at 0x7f..>`` differs between two runs of the same input)."""
    return valid_text(_ADDRESS.sub("", str(detail))[:500], escape=True)


def mark_dead(record: dict[str, Any], stage: str, reason: str, detail: str = "") -> dict[str, Any]:
    record[Field.DEAD] = {"stage": stage, "reason": reason, "detail": stable_detail(detail)}
    return record


def mark_filtered(record: dict[str, Any], stage: str, reason: str, detail: str = "") -> dict[str, Any]:
    record[Field.FILTERED] = {"stage": stage, "reason": reason, "detail": stable_detail(detail)}
    return record


def bump(record: dict[str, Any], counter: str, n: int = 1) -> None:
    """Add to a per-record counter; the shard writer sums them into the shard's stats."""
    stats = record.setdefault(Field.STATS, {})
    stats[counter] = stats.get(counter, 0) + n


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


def open_image(record: dict[str, Any]) -> Image.Image:
    """The record's image, opened lazily (header only until pixels are touched)."""
    return Image.open(io.BytesIO(image_bytes(record)))


def __getattr__(name: str) -> Any:
    """``EngineModelHandler`` lives in ``transforms.inference`` (importing Beam's RunInference costs seconds)."""
    if name == "EngineModelHandler":
        from transforms.inference import EngineModelHandler

        return EngineModelHandler
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def gpu_resource_hints(registry: EngineRegistry, spec: EngineSpec, accelerator: Optional[str]) -> dict[str, str]:
    """Beam's accelerator hint (e.g. ``type:nvidia-l4;count:1;install-nvidia-driver``) for GPU engines only."""
    return {"accelerator": accelerator} if accelerator and registry.entry(spec).gpu else {}


def per_sample(stage: str, fn: Callable[[dict], Any], record: dict) -> bool:
    """Run ``fn(record)``; a :class:`SampleError` (or any exception) marks the record dead.

    Returns True when the record is still alive.
    """
    try:
        fn(record)
        return True
    except SampleError as e:
        mark_dead(record, stage, e.reason, e.detail)
    except Exception as e:  # noqa: BLE001 - a bug on one sample must not fail the bundle
        LOG.exception("%s failed on %s", stage, record.get("key"))
        mark_dead(record, stage, "error", f"{type(e).__name__}: {e}")
    return False


def apply_image_engine(stage: str, engine: Engine, records: list[dict], cache: Optional[ModelCache],
                       digest_of: Callable[[dict], str], ask: Callable[[list[Image.Image], list[dict]], Sequence[Any]],
                       keep: Callable[[Any], bool], accept: Callable[[dict, Any, dict[str, Any]], None]) -> list[dict]:
    """The skeleton of a model stage that looks at the image (recaption, detect).

    Opens each live record's image (an unreadable one is dead-lettered), asks the engine for the
    whole batch at once (through ``cache`` when one is set: ``digest_of(record)`` names the
    question, ``keep(answer)`` says whether an answer may be stored), and hands each record its
    answer: an ``Exception`` dead-letters that record (a :class:`SampleError` with its reason,
    anything else as ``engine_error``), any other answer goes to ``accept(record, answer,
    provenance)``. An engine that fails the whole batch dead-letters the batch, with why.
    """
    images, alive = [], []
    for rec in records:
        if per_sample(stage, lambda r: images.append(open_image(r)), rec):
            alive.append(rec)
    if not images:
        return records
    provenance = engine.get_provenance()
    try:
        answers, cached = cached_answers(cache, stage, provenance, len(alive), lambda i: digest_of(alive[i]),
                                         lambda idx: ask([images[i] for i in idx], [alive[i] for i in idx]),
                                         keep=keep)
    except Exception as e:  # noqa: BLE001 - a whole-batch engine failure dead-letters the batch, with why
        for rec in alive:
            mark_dead(rec, stage, "engine_error", f"{type(e).__name__}: {e}")
        return records
    for rec, hit, answer in zip(alive, cached, answers):
        settle_answer(stage, rec, answer, lambda r, a: accept(r, a, provenance), cached=hit)
    return records


def settle_answer(stage: str, rec: dict, answer: Any, accept: Callable[[dict, Any], None],
                  cached: bool = False) -> None:
    """Hand one record the engine's answer: an exception dead-letters it (a :class:`SampleError`
    with its reason, anything else as ``engine_error``); any other answer goes to ``accept(record,
    answer)``, where a failure fails that sample only, never the bundle."""
    if cached:
        bump(rec, f"cache_hits:{stage}")
    if isinstance(answer, SampleError):
        mark_dead(rec, stage, answer.reason, answer.detail)
    elif isinstance(answer, BaseException):
        mark_dead(rec, stage, "engine_error", f"{type(answer).__name__}: {answer}")
    else:
        per_sample(stage, lambda r: accept(r, answer), rec)
