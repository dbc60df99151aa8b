"""What happens to one sample: marked dead-lettered or filtered with a reason (never raised), counted.

Records flow between stages as plain dicts. A sample that fails a stage is not raised: the stage
sets ``record[Field.DEAD] = {"stage", "reason", "detail"}`` (or ``record[Field.FILTERED]``) and the
runner routes it to a side output (``transforms.common.split_outcomes``), so one bad sample never
fails a bundle and every sample ends in exactly one of: written, dead-lettered, filtered.
"""
from __future__ import annotations

import logging
import re
from typing import Any, Callable

from core.record import MAX_DETAIL_CHARS, Field, SampleError, valid_text

LOG = logging.getLogger("transforms.common")  # the name these lines always had

_ADDRESS = re.compile(r" (?:object )?at 0x[0-9a-fA-F]+")


def stable_detail(detail: object) -> str:
    """A failure's detail as the run writes it: valid text (it often quotes a path or an input value,
    escaped so the letter can be written), at most ``MAX_DETAIL_CHARS`` (500) characters, no memory addresses
    (``<_io.BytesIO object at 0x7f..>`` differs between two runs of the same input)."""
    return valid_text(_ADDRESS.sub("", str(detail))[:MAX_DETAIL_CHARS], escape=True)


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
