"""The skeleton every model stage that looks at the image shares (recaption, detect)."""
from __future__ import annotations

from typing import Any, Callable, Optional, Sequence

from PIL import Image

from core.engines import Engine
from core.images import open_image
from core.outcomes import mark_dead, per_sample, settle_answer
from stages.cache import ModelCache, cached_answers


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
