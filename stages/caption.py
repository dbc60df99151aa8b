"""Recaption's logic: a VLM writes the long caption; the input's alt-text stays as ``short_caption``
(the Beam transform: ``transforms.recaption.Recaption``)."""
from __future__ import annotations

import functools
from typing import Any, Optional

from core.engines import Captioner, EngineEntry, EngineRegistry
from core.record import is_valid_text, valid_text
from core.images import open_image
from core.outcomes import bump, mark_dead, per_sample, settle_answer
from core.spill import image_sha256
from stages.cache import ModelCache, to_json
from stages.common import apply_image_engine
from stages.window import Job

STAGE = "recaption"

CAPTIONERS = EngineRegistry(STAGE, "captioner", Captioner, {
    "stub": EngineEntry("model_stubs.captioner:build", False, False,
                        "oracle on synthetic scenes, generic text otherwise; marked stub"),
    "openai": EngineEntry("stages.engines.captioner_openai:build", True, False,
                          "OpenAI-compatible server, e.g. LMDeploy serving CogVLM2: openai:http://host:23333/v1#MODEL"),
    "vllm": EngineEntry("stages.engines.captioner_vllm:build", True, True,
                        "in-process vLLM VLM (Qwen2-VL, InternVL...): vllm:/models/Qwen2-VL-7B-Instruct"),
    "transformers": EngineEntry("stages.engines.captioner_transformers:build", True, True,
                                "local HF VLM, bf16 on GPU; CogVLM2 needs ?trust_remote_code=true"),
})


def clean_caption(rec: dict, cap: str, max_chars: int) -> str:
    """A long caption as shards hold it, whoever wrote it (the captioner, or the input with
    ``--reuse-captions``): whitespace runs made one space, NULs dropped, valid UTF-8 (counted
    ``unicode_repaired``), at most ``max_chars`` characters cut at a word (``caption_truncated``)."""
    cap = " ".join((cap or "").replace("\x00", " ").split())
    if not is_valid_text(cap):  # a lone surrogate from a model (or a cache entry) would fail the shard write
        cap = valid_text(cap)
        bump(rec, "unicode_repaired")
    if len(cap) > max_chars:
        cap = cap[:max_chars].rsplit(" ", 1)[0]
        bump(rec, "caption_truncated")
    return cap


def accept_caption(rec: dict, cap: Any, provenance: dict[str, Any], max_chars: int) -> None:
    """Set the record's caption (:func:`clean_caption`) or dead-letter it when empty."""
    cap = clean_caption(rec, cap, max_chars)
    if not cap:
        mark_dead(rec, STAGE, "empty_caption")
        return
    rec["caption"] = cap
    rec.setdefault("provenance", {})["caption"] = provenance


def keep_caption(answer: Any) -> bool:
    return isinstance(answer, str) and bool(answer)


def apply_captioner(engine: Captioner, records: list[dict], max_chars: int = 4000,
                    cache: Optional[ModelCache] = None) -> list[dict]:
    """Caption every live record of the batch; failures mark the record dead. ``cache``: see stages.cache."""
    return apply_image_engine(STAGE, engine, records, cache, image_sha256,
                              lambda images, _: engine.caption(images), keep=keep_caption,
                              accept=functools.partial(accept_caption, max_chars=max_chars))


class CaptionJob(Job):
    """One record through a server captioner's request window; the same outcome as :func:`apply_captioner`.

    Built on the bundle's thread: opens the image, reads the cache, encodes the request body.
    """

    def __init__(self, engine: Any, record: dict, max_chars: int = 4000, cache: Optional[ModelCache] = None):
        self.record, self.engine, self.max_chars, self.cache = record, engine, max_chars, cache
        self._requests: list[tuple[Any, Any]] = []
        self._done = False
        images: list[Any] = []
        if not per_sample(STAGE, lambda r: images.append(open_image(r)), record):
            self._done = True
            return
        self.provenance = engine.get_provenance()
        self._key = None
        if cache is not None:
            self._key = cache.key(STAGE, self.provenance, image_sha256(record))
            hit = cache.get_many(STAGE, [self._key]).get(self._key)
            if _keeps(hit):
                self._settle(hit, cached=True)
                return
        try:
            self._requests = [((id(self), 0), engine.request(images[0]))]
        except Exception as e:  # noqa: BLE001 - an image that fails to encode: that sample's answer, as in a batch
            self._settle(e)

    def start(self) -> list[tuple[Any, Any]]:
        return self._requests

    def answer(self, key: Any, result: Any) -> list[tuple[Any, Any]]:
        if self.cache is not None and _keeps(result):
            self.cache.put_many(STAGE, {self._key: to_json(result)})
        self._settle(result)
        return []

    def _settle(self, answer: Any, cached: bool = False) -> None:
        self._done = True
        settle_answer(STAGE, self.record, answer,
                      lambda r, a: accept_caption(r, a, self.provenance, self.max_chars), cached=cached)

    def done(self) -> bool:
        return self._done


def _keeps(answer: Any) -> bool:
    return keep_caption(answer)
