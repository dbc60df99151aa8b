"""Recaption: a VLM writes the long caption; the input's alt-text stays as ``short_caption``."""
from __future__ import annotations

from typing import Any

import functools

import apache_beam as beam
from apache_beam.ml.inference.base import RunInference

from pipeline.engines import EngineEntry, EngineRegistry, EngineSpec
from transforms.common import EngineModelHandler, SampleError, mark_dead, open_image, per_sample

STAGE = "recaption"

CAPTIONERS = EngineRegistry("captioner", {
    "stub": EngineEntry("model_stubs.captioner:build", False, False,
                        "oracle on synthetic scenes, generic text otherwise; marked stub"),
})


def apply_captioner(engine: Any, records: list[dict], max_chars: int = 4000) -> list[dict]:
    """Caption every live record of the batch; failures mark the record dead."""
    images, alive = [], []
    for rec in records:
        if per_sample(STAGE, lambda r: images.append(open_image(r)), rec):
            alive.append(rec)
    try:
        captions = engine.caption(images) if images else []
    except Exception as e:  # noqa: BLE001 - a whole-batch engine failure dead-letters the batch, with why
        for rec in alive:
            mark_dead(rec, STAGE, "engine_error", f"{type(e).__name__}: {e}")
        return records
    for rec, cap in zip(alive, captions):
        if isinstance(cap, SampleError):
            mark_dead(rec, STAGE, cap.reason, cap.detail)
            continue
        if isinstance(cap, Exception):
            mark_dead(rec, STAGE, "engine_error", f"{type(cap).__name__}: {cap}")
            continue
        cap = " ".join((cap or "").split())
        if not cap:
            mark_dead(rec, STAGE, "empty_caption")
            continue
        if len(cap) > max_chars:
            cap = cap[:max_chars].rsplit(" ", 1)[0]
            rec.setdefault("_stats", {})["caption_truncated"] = 1
        rec["caption"] = cap
        rec.setdefault("provenance", {})["caption"] = engine.provenance
    return records


class Recaption(beam.PTransform):
    def __init__(self, spec: EngineSpec, batch_size: int = 8, max_chars: int = 4000):
        super().__init__()
        self.spec, self.batch_size, self.max_chars = spec, batch_size, max_chars

    def expand(self, records: beam.PCollection) -> beam.PCollection:
        handler = EngineModelHandler(CAPTIONERS, self.spec,
                                     functools.partial(apply_captioner, max_chars=self.max_chars),
                                     batch_size=self.batch_size)
        return records | "Caption" >> RunInference(handler)
