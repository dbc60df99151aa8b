"""GenerateNegatives: 10 hard negatives per region expression, cleaned and validated.

Engines return raw candidate lists; this module owns the paper's symbol cleanup and the
validation (exactly 10, distinct, none equal to the positive, head noun kept, length bounds).
An invalid answer is retried with a new seed; a region whose answer stays invalid keeps
``flag_short_neg = 0`` and its reason is counted. The image is never lost over negatives.
"""
from __future__ import annotations

import functools
import re
from typing import Any, Optional

import apache_beam as beam
from apache_beam.ml.inference.base import RunInference

from pipeline.engines import EngineEntry, EngineRegistry, EngineSpec
from pipeline.record import NUM_NEGATIVES, negatives_mapping
from transforms.common import EngineModelHandler, mark_dead

STAGE = "negatives"

NEGATIVE_ENGINES = EngineRegistry("negatives", {
    "stub": EngineEntry("model_stubs.negatives:build", False, False, "colour swaps; marked stub"),
})

_NUMBERING = re.compile(r"^\s*(?:\(?\d{1,2}[.):\]]|[-*\u2022])\s*")
_SYMBOLS = re.compile(r"[;,\n\r\t\"\u201c\u201d\u2018\u2019`]+")


def clean_negative(text: str) -> str:
    """Drop the symbols the paper names (';' ',' newline), numbering, quotes and extra spaces."""
    text = _NUMBERING.sub("", str(text))
    text = _SYMBOLS.sub(" ", text)
    text = text.strip(" '.:")
    return " ".join(text.split())


def _norm(text: str) -> str:
    return " ".join(text.lower().split())


def head_noun(expression: str) -> str:
    """The last word of the expression's noun phrase (before any preposition)."""
    words = re.findall(r"[A-Za-z][A-Za-z'-]*", expression.lower())
    for stop in ("in", "on", "at", "with", "of", "near", "next", "under", "behind", "beside", "that", "which"):
        if stop in words[1:]:
            words = words[:words.index(stop, 1)]
    return words[-1] if words else ""


def validate_negatives(positive: str, negatives: list[str], min_chars: int = 3,
                       max_chars: int = 200) -> Optional[str]:
    """None when ``negatives`` are usable, else the reason they are not."""
    if len(negatives) != NUM_NEGATIVES:
        return "wrong_count"
    normed = [_norm(n) for n in negatives]
    if any(not (min_chars <= len(n) <= max_chars) for n in normed):
        return "bad_length"
    if len(set(normed)) != len(normed):
        return "duplicates"
    if _norm(positive) in normed:
        return "equals_positive"
    head = head_noun(positive)
    if head and any(head not in re.findall(r"[a-z][a-z'-]*", n) for n in normed):
        return "head_noun_changed"
    return None


def apply_negatives(engine: Any, records: list[dict], retries: int = 2) -> list[dict]:
    """Fill ``short_expr_negs``/``flag_short_neg`` of every region in the batch."""
    regions = [r for rec in records if "_dead" not in rec for r in rec.get("bbox_info", [])]
    pending = list(range(len(regions)))
    reasons: dict[int, str] = {}
    for attempt in range(retries + 1):
        if not pending:
            break
        try:
            answers = engine.generate([regions[i]["short_expr"] for i in pending], seed=attempt)
        except Exception as e:  # noqa: BLE001 - the engine failing is a per-region reason, not a lost image
            for i in pending:
                reasons[i] = "engine_error"
            answers = None
            if attempt == retries:
                break
            continue
        still = []
        for i, raw in zip(pending, answers):
            if isinstance(raw, Exception):
                reasons[i] = "engine_error"
                still.append(i)
                continue
            negs = [clean_negative(n) for n in (raw or [])]
            negs = [n for n in negs if n]
            why = validate_negatives(regions[i]["short_expr"], negs)
            if why is None:
                regions[i]["short_expr_negs"] = negatives_mapping(negs)
                regions[i]["flag_short_neg"] = 1
                reasons.pop(i, None)
            else:
                reasons[i] = why
                still.append(i)
        pending = still
    # Count per record so the shard stats can report the valid rate and reasons.
    offset = 0
    for rec in records:
        if "_dead" in rec:
            continue
        stats = rec.setdefault("_stats", {})
        n = len(rec.get("bbox_info", []))
        for j in range(offset, offset + n):
            if j in reasons:
                stats[f"negatives_invalid:{reasons[j]}"] = stats.get(f"negatives_invalid:{reasons[j]}", 0) + 1
            else:
                stats["negatives_valid"] = stats.get("negatives_valid", 0) + 1
        offset += n
        if n:
            rec.setdefault("provenance", {})["negatives"] = engine.provenance
    return records


class GenerateNegatives(beam.PTransform):
    def __init__(self, spec: EngineSpec, batch_size: int = 16, retries: int = 2):
        super().__init__()
        self.spec, self.batch_size, self.retries = spec, batch_size, retries

    def expand(self, records: beam.PCollection) -> beam.PCollection:
        apply = functools.partial(apply_negatives, retries=self.retries)
        return records | "Negatives" >> RunInference(
            EngineModelHandler(NEGATIVE_ENGINES, self.spec, apply, batch_size=self.batch_size))
