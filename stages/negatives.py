"""Negatives' logic: 10 hard negatives per region expression, cleaned and validated (the Beam transform:
``transforms.negatives.GenerateNegatives``).

Engines return raw answers (a JSON text, or a list of strings); ``stages.negatives_validation`` owns
the parsing, the paper's symbol cleanup and the validation (exactly 10, pairwise distinct, none equal
to the positive, head noun kept, length bounds, and nothing an annotator would not write: a count word
before a singular noun, a verb made plural, a material on a person or animal; see
:func:`stages.negatives_validation.implausible`). An invalid answer is retried with a new seed; a region
whose answer stays invalid keeps ``flag_short_neg = 0`` and its reason is counted in
``rec[Field.STATS]`` (``negatives_invalid:<reason>``). The image is never lost over negatives.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Optional, Sequence

from core.engines import EngineEntry, EngineRegistry, NegativesEngine
from core.record import MAX_DETAIL_CHARS, NUM_NEGATIVES, Field, SampleError, is_valid_text, negatives_mapping
from stages.cache import ModelCache, digest
from core.outcomes import bump
from stages.negatives_validation import (first_reason, merge_answers, negative_reasons, parse_answer,
                                         validate_negatives)
from stages.text import analyse_many

STAGE = "negatives"

NEGATIVE_ENGINES = EngineRegistry(STAGE, "negatives", NegativesEngine, {
    "stub": EngineEntry("model_stubs.negatives:build", False, False, "colour swaps; marked stub"),
    "rules": EngineEntry("stages.engines.negatives_rules:build", False, False,
                         "deterministic attribute swaps from prompts/negatives_lexicons.json; no model"),
    "llama-cpp": EngineEntry("stages.engines.negatives_llama_cpp:build", True, False,
                             "llama.cpp's server in-process (xllamacpp wheel) on a GGUF with the GBNF grammar, "
                             "e.g. llama-cpp:/models/m.gguf?n_ctx=2048&n_threads=4"),
    "openai": EngineEntry("stages.engines.negatives_openai:build", True, False,
                          "OpenAI-compatible server, e.g. openai:http://127.0.0.1:8000/v1?structured=auto#MODEL"),
    "vllm": EngineEntry("stages.engines.negatives_vllm:build", True, True,
                        "in-process vllm.LLM with JSON-schema structured outputs, e.g. vllm:/models/llama"),
})


@dataclass
class NegativesResult:
    """What one expression got: cleaned negatives, whether they pass, why not, after how many asks."""

    expression: str
    negatives: list[str] = field(default_factory=list)
    valid: bool = False
    reason: Optional[str] = None
    attempts: int = 0
    cached: bool = False
    detail: str = ""  # why not valid: the engine's error text or the validation reason
    raw: Any = None  # the model's last answer when it was not valid (for diagnostics/)

    def to_json(self) -> dict[str, Any]:
        return {"expression": self.expression, "negatives": self.negatives, "valid": self.valid,
                "reason": self.reason, "attempts": self.attempts}


def cached_negatives(engine: Any, unique: Sequence[str], cache: Optional[ModelCache]
                     ) -> tuple[dict[str, NegativesResult], dict[str, str]]:
    """A result per distinct expression, valid where the cache holds usable negatives; the cache keys."""
    results = {e: NegativesResult(e) for e in unique}
    keys: dict[str, str] = {}
    if cache is not None:
        provenance = engine.get_provenance()
        keys = {e: cache.key(STAGE, provenance, digest(e)) for e in unique}
        hits = cache.get_many(STAGE, list(keys.values()))
        for e in unique:
            got = hits.get(keys[e])
            if (isinstance(got, list) and all(isinstance(x, str) and is_valid_text(x) for x in got)
                    and validate_negatives(e, got) is None):
                res = results[e]
                res.negatives, res.valid, res.cached = got, True, True
    return results, keys


def judge_answer(res: NegativesResult, raw: Any, attempt: int, engine: Any = None) -> bool:
    """Take the engine's answer (or its exception) to attempt ``attempt`` of ``res``; True when valid.

    The valid items of every answer are kept (:func:`merge_answers`), so a later attempt only has to
    fill what is missing; a result short of ten says why (a faulty item's reason, or the engine's
    ``shortfall`` where it has one: the rules engine gives fewer than ten where no honest edit is left).
    """
    res.attempts = attempt + 1
    res.raw, res.detail = (None if isinstance(raw, BaseException) else raw), ""
    try:
        if isinstance(raw, BaseException):
            raise raw
        items = parse_answer(raw)
        res.negatives = merge_answers(res.expression, res.negatives, items)
        res.reason = None if len(res.negatives) == NUM_NEGATIVES else "wrong_count"  # each item checked
        if res.reason == "wrong_count":
            short = ["wrong_count"] if len(items) != NUM_NEGATIVES else []  # an answer of 9 says so first
            res.reason = first_reason(negative_reasons(res.expression, items) + short) or "wrong_count"
            res.detail = f"{len(res.negatives)} of {NUM_NEGATIVES} usable"
            if hasattr(engine, "shortfall"):
                res.detail += f"; {engine.shortfall(res.expression)}"
    except SampleError as e:
        res.reason, res.detail = e.reason, e.detail
    except Exception as e:  # noqa: BLE001 - any engine failure is a counted per-region reason
        res.reason, res.detail = "engine_error", f"{type(e).__name__}: {e}"
    res.valid = res.reason is None
    return res.valid


def negatives_for(engine: Any, expressions: Sequence[str], retries: int = 2,
                  cache: Optional[ModelCache] = None) -> list[NegativesResult]:
    """Ask ``engine`` for each distinct expression, retrying invalid answers with a new seed.

    With a ``cache`` (stages.cache), valid negatives kept from an earlier run are used (after
    validating them again) and new valid ones are kept.
    """
    unique = list(dict.fromkeys(expressions))
    analyse_many(unique)  # parse the positives together (validation needs their head nouns)
    results, keys = cached_negatives(engine, unique, cache)
    pending = [e for e in unique if not results[e].valid]
    asked = list(pending)
    for attempt in range(retries + 1):
        if not pending:
            break
        try:
            answers = list(engine.generate(pending, seed=attempt))
            if len(answers) != len(pending):
                raise RuntimeError(f"engine gave {len(answers)} answers for {len(pending)} expressions")
        except Exception as e:  # noqa: BLE001 - the engine failing is a per-region reason, not a lost image
            answers = [SampleError("engine_error", f"{type(e).__name__}: {e}")] * len(pending)
        pending = [expr for expr, raw in zip(pending, answers) if not judge_answer(results[expr], raw, attempt, engine)]
    if cache is not None:
        cache.put_many(STAGE, {keys[e]: results[e].negatives for e in asked if results[e].valid})
    return [results[e] for e in expressions]


def live_records(records: list[dict]) -> list[dict]:
    return [rec for rec in records if Field.DEAD not in rec and Field.FILTERED not in rec]


def apply_negatives(engine: Any, records: list[dict], retries: int = 2,
                    cache: Optional[ModelCache] = None) -> list[dict]:
    """Fill ``short_expr_negs``/``flag_short_neg`` of every region in the batch and count outcomes."""
    live = live_records(records)
    results = negatives_for(engine, region_expressions(live), retries=retries, cache=cache)
    fill_negatives(engine, live, results)
    return records


def fill_negatives(engine: Any, live: list[dict], results: Sequence[NegativesResult]) -> None:
    """Put each region's result (in region order over ``live``) into its region and count the outcomes."""
    by_region = iter(results)
    for rec in live:
        for region in rec.get("bbox_info", []):
            res = next(by_region)
            if res.cached:
                bump(rec, "cache_hits:negatives")
            if res.valid:
                region["short_expr_negs"] = negatives_mapping(res.negatives)
                region["flag_short_neg"] = 1
                bump(rec, "negatives_valid")
            else:
                region["short_expr_negs"] = {}
                region["flag_short_neg"] = 0
                bump(rec, f"negatives_invalid:{res.reason}")
                rec.setdefault(Field.DIAGNOSTICS, []).append(invalid_negatives_diagnostic(res))
        if rec.get("bbox_info"):
            rec.setdefault("provenance", {})["negatives"] = engine.get_provenance()


PARSE_BATCH = 32  # records whose expressions a windowed negatives stage parses together (parse_expressions)


def parse_expressions(records: Sequence[dict]) -> None:
    """Parse the region expressions of many records in one ``nlp.pipe`` (``stages.text.analyse_many`` keeps them),
    so each record's :class:`NegativesJob` finds its own parsed. Measured: 1.1-1.4 ms a phrase in a batch of
    ten or more, 2.5-3.2 ms one or two at a time; with a server answering fast, one local process fed ~25% more
    requests a second (bench/saturation.py, 32 slots, 0.2 s)."""
    analyse_many(list(dict.fromkeys(region_expressions(live_records(list(records))))))


def region_expressions(live: list[dict]) -> list[str]:
    """The expression each region of ``live`` records asks negatives for, in order (repeats kept)."""
    return [region["short_expr"] for rec in live for region in rec.get("bbox_info", [])]


class NegativesJob:
    """One record's regions through a server engine's request window: the same outcome as
    :func:`apply_negatives` on a batch of that record alone.

    Built on the bundle's thread (spaCy analysis of the positives, cache reads); each answer is
    parsed and validated there too, and an invalid one is asked again with the next seed at once.
    Requests are keyed ``(expression, seed)``: the window sends one for all records of a bundle
    that ask the same.
    """

    def __init__(self, engine: Any, record: dict, retries: int = 2, cache: Optional[ModelCache] = None):
        self.record, self.engine, self.retries, self.cache = record, engine, retries, cache
        self._live = live_records([record])
        self._expressions = region_expressions(self._live)
        unique = list(dict.fromkeys(self._expressions))
        analyse_many(unique)
        self._results, self._keys = cached_negatives(engine, unique, cache) if unique else ({}, {})
        self._asked = [e for e in unique if not self._results[e].valid]
        self._open = set(self._asked)

    def start(self) -> list[tuple[Any, Any]]:
        return [((e, 0), (e, 0)) for e in self._asked]

    def answer(self, key: Any, result: Any) -> list[tuple[Any, Any]]:
        expression, attempt = key
        if judge_answer(self._results[expression], result, attempt, self.engine) or attempt >= self.retries:
            self._open.discard(expression)
            return []
        return [((expression, attempt + 1), (expression, attempt + 1))]

    def done(self) -> bool:
        return not self._open

    def finish(self) -> dict:
        if self.cache is not None and self._asked:
            self.cache.put_many(STAGE, {self._keys[e]: self._results[e].negatives for e in self._asked
                                        if self._results[e].valid})
        fill_negatives(self.engine, self._live, [self._results[e] for e in self._expressions])
        return self.record


def invalid_negatives_diagnostic(res: NegativesResult) -> dict[str, Any]:
    """What ``diagnostics/`` keeps of a region whose negatives stayed invalid: reason, error, raw answer."""
    raw = res.raw if isinstance(res.raw, str) else json.dumps(res.raw, ensure_ascii=False) if res.raw else None
    return {"stage": STAGE, "expression": res.expression, "reason": res.reason, "detail": res.detail[:MAX_DETAIL_CHARS],
            "raw_answer": raw[:2000] if raw else None, "attempts": res.attempts}
