"""Recaption: a VLM writes the long caption; the input's alt-text stays as ``short_caption``."""
from __future__ import annotations

from typing import Any, Optional

import functools

import apache_beam as beam
from apache_beam.ml.inference.base import RunInference

from core.engines import EngineEntry, EngineRegistry, EngineSpec
from transforms.cache import ModelCache, cached_answers, model_cache
from transforms.common import (EngineModelHandler, SampleError, engine_provenance, gpu_resource_hints, mark_dead,
                               open_image, per_sample)
from transforms.spill import image_sha256

STAGE = "recaption"

CAPTIONERS = EngineRegistry("captioner", {
    "stub": EngineEntry("model_stubs.captioner:build", False, False,
                        "oracle on synthetic scenes, generic text otherwise; marked stub"),
    "openai": EngineEntry("transforms.engines.captioners:build_openai", True, False,
                          "OpenAI-compatible server, e.g. LMDeploy serving CogVLM2: openai:http://host:23333/v1#MODEL"),
    "vllm": EngineEntry("transforms.engines.captioners:build_vllm", True, True,
                        "in-process vLLM VLM (Qwen2-VL, InternVL...): vllm:/models/Qwen2-VL-7B-Instruct"),
    "transformers": EngineEntry("transforms.engines.captioners:build_transformers", True, True,
                                "local HF VLM, bf16 on GPU; CogVLM2 needs ?trust_remote_code=true"),
})


def apply_captioner(engine: Any, records: list[dict], max_chars: int = 4000,
                    cache: Optional[ModelCache] = None) -> list[dict]:
    """Caption every live record of the batch; failures mark the record dead. ``cache``: see transforms.cache."""
    images, alive = [], []
    for rec in records:
        if per_sample(STAGE, lambda r: images.append(open_image(r)), rec):
            alive.append(rec)
    if not images:
        return records
    provenance = engine_provenance(engine)
    try:
        captions, cached = cached_answers(
            cache, STAGE, provenance, len(alive), lambda i: image_sha256(alive[i]),
            lambda idx: engine.caption([images[i] for i in idx]), keep=lambda c: isinstance(c, str) and bool(c))
    except Exception as e:  # noqa: BLE001 - a whole-batch engine failure dead-letters the batch, with why
        for rec in alive:
            mark_dead(rec, STAGE, "engine_error", f"{type(e).__name__}: {e}")
        return records
    for rec, hit in zip(alive, cached):
        if hit:
            rec.setdefault("_stats", {})["cache_hits:recaption"] = 1
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
        rec.setdefault("provenance", {})["caption"] = provenance
    return records


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
        handler = EngineModelHandler(CAPTIONERS, self.spec,
                                     functools.partial(apply_captioner, max_chars=self.max_chars,
                                                       cache=model_cache(self.cache_root)),
                                     batch_size=self.batch_size, engine_options=self.engine_options)
        infer = RunInference(handler)
        hints = gpu_resource_hints(CAPTIONERS, self.spec, self.accelerator)
        return records | "Caption" >> (infer.with_resource_hints(**hints) if hints else infer)
