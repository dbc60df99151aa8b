"""GenerateNegatives: 10 hard negatives per region expression, cleaned and validated.

Engines return raw answers (a JSON text, or a list of strings); this module owns the parsing,
the paper's symbol cleanup and the validation (exactly 10, pairwise distinct, none equal to the
positive, head noun kept, length bounds, and nothing an annotator would not write: a count word
before a singular noun, a verb made plural, a material on a person or animal; see
:func:`implausible`). An invalid answer is retried with a new seed; a region
whose answer stays invalid keeps ``flag_short_neg = 0`` and its reason is counted in
``rec[Field.STATS]`` (``negatives_invalid:<reason>``). The image is never lost over negatives.
"""
from __future__ import annotations

import functools
import json
import re
from dataclasses import dataclass, field
from typing import Any, Optional, Sequence

import apache_beam as beam

from core.engines import EngineEntry, EngineRegistry, EngineSpec, NegativesEngine
from core.record import Field, NUM_NEGATIVES, is_valid_text, negatives_mapping, valid_text
from transforms.cache import ModelCache, digest, model_cache
from transforms.common import SampleError, bump
from transforms.lexicons import LEXICONS_FILE, lexicons  # noqa: F401 - LEXICONS_FILE re-exported
from transforms.negatives_prompt import (GRAMMAR_FILE, PROMPT_FILE, SCHEMA_FILE,  # noqa: F401 - re-exported
                                         NegativesPrompt, load_negatives_prompt, request_seed)
from transforms.text import (ING_NOUNS, PLURAL_TAGS, analyse, analyse_many, head_noun, norm, plural_noun, singular_noun,  # noqa: F401
                             tokens)

STAGE = "negatives"
MIN_CHARS, MAX_CHARS = 3, 120
EXTRA_WORDS = 6  # a negative may be this many words longer than its positive

NEGATIVE_ENGINES = EngineRegistry(STAGE, "negatives", NegativesEngine, {
    "stub": EngineEntry("model_stubs.negatives:build", False, False, "colour swaps; marked stub"),
    "rules": EngineEntry("transforms.engines.negatives_rules:build", False, False,
                         "deterministic attribute swaps from prompts/negatives_lexicons.json; no model"),
    "llama-cpp": EngineEntry("transforms.engines.negatives_llama_cpp:build", True, False,
                             "llama.cpp's server in-process (xllamacpp wheel) on a GGUF with the GBNF grammar, "
                             "e.g. llama-cpp:/models/m.gguf?n_ctx=2048&n_threads=4"),
    "openai": EngineEntry("transforms.engines.negatives_openai:build", True, False,
                          "OpenAI-compatible server, e.g. openai:http://127.0.0.1:8000/v1?structured=auto#MODEL"),
    "vllm": EngineEntry("transforms.engines.negatives_vllm:build", True, True,
                        "in-process vllm.LLM with JSON-schema structured outputs, e.g. vllm:/models/llama"),
})

_NUMBERING = re.compile(r"^\s*(?:(?:negative|option|answer)\s*\d{0,2}\s*[:.)\]-]|\(?\d{1,2}\s*[.):\]-]|[-*\u2022])\s*",
                        re.IGNORECASE)
_SYMBOLS = re.compile(r"[;,\n\r\t\"\u201c\u201d\u2018\u2019`\[\]{}]+")
PLAUSIBILITY_REASONS = ("plural_verb", "bad_plural", "count_without_plural", "plural_after_article", "material_on_living",
                        "pattern_on_living")
VALIDATION_REASONS = ("wrong_count", "bad_length", "duplicates", "equals_positive", "head_noun_changed",
                      *PLAUSIBILITY_REASONS)


def clean_negative(text: str) -> str:
    """Drop the symbols the paper names (';' ',' newline), numbering, quotes and extra spaces."""
    text = _NUMBERING.sub("", str(text))
    text = _SYMBOLS.sub(" ", text)
    text = text.strip(" '.:!?")
    return " ".join(text.split())


def noun_forms(noun: str) -> set[str]:
    """The noun and its singular/plural forms (a count change may pluralise it), lower case."""
    noun = noun.lower()
    forms = {noun, plural_noun(noun).lower(), singular_noun(noun).lower(), noun + "s", noun + "es"}
    if noun.endswith("y"):
        forms.add(noun[:-1] + "ies")
    if noun.endswith("ies"):
        forms.add(noun[:-3] + "y")
    if noun.endswith("es"):
        forms.add(noun[:-2])
    if noun.endswith("s"):
        forms.add(noun[:-1])
    return forms


# Where a noun phrase inside a negative stops looking left for its determiner or count.
_ZONE_BREAKS = frozenset(("of", "with", "in", "on", "at", "near", "by", "from", "and", "or", "to", "for", "under",
                          "behind", "beside", "next", "over", "above", "below", "into", "onto", "holding", "wearing"))
_NOT_VERB_POS = ("NOUN", "PROPN", "NUM", "PUNCT", "SYM", "X", "SPACE")


@dataclass(frozen=True)
class _Positive:
    """What the plausibility checks need to know of a positive (computed once per expression)."""

    head: str
    singular: frozenset[str]
    plural: frozenset[str]
    kind: str
    zone: frozenset[str]  # words before the head
    verb_plurals: frozenset[str]  # a non-noun word given a plural ending ("lyings")
    other_plurals: frozenset[str]  # plurals of the positive's other singular nouns ("carts")
    allowed_patterns: frozenset[str]
    material_ok: bool  # the positive has a material before its head ("a wooden horse")
    pattern_ok: bool
    mass: bool  # "the grass", "some rice": "a pile of rice" needs no plural


@functools.lru_cache(maxsize=65536)
def _positive(positive: str) -> _Positive:
    lex = lexicons()
    ph = analyse(positive)
    toks = tokens(positive)
    head = ph.head_word
    w = ph.words[ph.head] if ph.head >= 0 else None
    if w is None:
        sing = plur = {head}
    elif head in lex.plural_only:  # "glasses": plural; "a glass" is another thing but not wrong English
        plur, sing = {head}, {w.lemma}
    elif w.tag in PLURAL_TAGS:
        plur, sing = {head}, {singular_noun(head, w.lemma).lower()}
    else:
        sing, plur = {head}, {plural_noun(head).lower()}
    if plur == sing:  # "sheep": one form, singular and plural
        plur = sing = plur | sing
    plur = plur | {a for s in sing for a in lex.alternative_plurals.get(s, ())}  # "persons" is a plural too
    kind = lex.kind_of(ph).kind
    head_at = toks.index(head) if head in toks else len(toks)
    zone = frozenset(toks[:head_at])
    verb_plurals, other_plurals = set(), set()
    for i, word in enumerate(ph.words):
        low = word.low.strip(".,;:!?")
        if i == ph.head or not low.isalpha():
            continue
        if word.pos not in _NOT_VERB_POS or (low.endswith("ing") and low not in ING_NOUNS):
            verb_plurals.update((low + "s", low + "es"))
        elif word.tag == "NN" and low not in lex.plural_only:
            other_plurals.add(plural_noun(low).lower())
    verb_plurals.update(p + "s" for p in lex.pose_words)
    allowed = lex.allowed(kind, "pattern")
    return _Positive(head, frozenset(sing), frozenset(plur), kind, zone,
                     frozenset(verb_plurals - set(toks) - plur - sing), frozenset(other_plurals - set(toks)),
                     frozenset(allowed) if isinstance(allowed, tuple) else frozenset(),
                     material_ok=bool(zone & lex.materials), pattern_ok=bool(zone & lex.patterns),
                     mass=lex.is_mass(ph) and plural_noun(head).lower() != head and w is not None
                     and w.tag not in PLURAL_TAGS)


def _np_zone(toks: list[str], end: int) -> tuple[list[str], bool]:
    """Words of the noun phrase ending before ``end`` and whether a "group of"-like noun quantifies it."""
    start = end
    while start > 0 and toks[start - 1] not in _ZONE_BREAKS:
        start -= 1
    quantified = start > 1 and toks[start - 1] == "of" and toks[start - 2] in lexicons().quantity_nouns
    return toks[start:end], quantified


def _last_determiner(zone: list[str]) -> Optional[str]:
    """The determiner nearest the noun ("a man's shoes": the possessive, not "a")."""
    lex = lexicons()
    dets = [t for t in zone if t in lex.determiners or t in lex.singular_determiners or lex.is_plural_count(t)
            or t.endswith("'s")]
    return dets[-1] if dets else None


def implausible(positive: str, negative: str) -> Optional[str]:
    """Why no annotator would write ``negative`` for ``positive`` (None when nothing is wrong).

    - ``plural_verb``: a verb or other non-noun word of the positive given a plural ending
      ("a dog lyings on the grass");
    - ``bad_plural``: the head noun with a plural English does not have ("two mans", "sheeps");
    - ``count_without_plural``: a count word ("two", "several", "a group of") before a singular
      head ("three dog");
    - ``plural_after_article``: "a", "one", "this" before a plural noun ("a dogs", "riding a bicycles");
    - ``material_on_living``: a material on a person or animal ("a wicker woman", "a concrete dog");
    - ``pattern_on_living``: a pattern on a person, or on an animal one it does not have
      ("a checkered man", "a dotted bird"; striped and spotted animals are fine).

    A positive that already has such a word ("a wooden horse", "a 2 year old boy") licenses it,
    and so does a positive the same check would fault.
    """
    reason = _implausible(_positive(positive), negative)
    return None if reason and reason == _own_reason(positive) else reason


@functools.lru_cache(maxsize=65536)
def _own_reason(positive: str) -> Optional[str]:
    return _implausible(_positive(positive), positive)


def _implausible(info: _Positive, negative: str) -> Optional[str]:
    lex = lexicons()
    toks = tokens(negative)
    if any(t in info.verb_plurals for t in toks):
        return "plural_verb"
    at = next((i for i, t in enumerate(toks) if t in info.singular or t in info.plural), None)
    if at is None:
        forms = noun_forms(info.head)
        return "bad_plural" if any(t in forms for t in toks) else None  # "mans", "sheeps", "childs"
    zone, quantified = _np_zone(toks, at)
    is_plural = toks[at] in info.plural
    if not is_plural and ((quantified and not info.mass) or
                          any(lex.is_plural_count(t) and t not in info.zone for t in zone)):
        return "count_without_plural"
    if is_plural and toks[at] not in info.singular and not quantified and \
            _last_determiner(zone) in lex.singular_determiners:
        return "plural_after_article"
    for i, t in enumerate(toks):
        if t in info.other_plurals and _last_determiner(_np_zone(toks, i)[0]) in lex.singular_determiners:
            return "plural_after_article"
    if info.kind in lex.living:
        if not info.material_ok and any(t in lex.materials for t in zone):
            return "material_on_living"
        if not info.pattern_ok and any(t in lex.patterns and t not in info.allowed_patterns for t in zone):
            return "pattern_on_living"
    return None


def negative_reason(positive: str, negative: str, min_chars: int = MIN_CHARS, max_chars: int = MAX_CHARS,
                    extra_words: int = EXTRA_WORDS) -> Optional[str]:
    """Why one negative is not usable for ``positive`` (None when it is); duplicates aside."""
    if not (min_chars <= len(negative) <= max_chars) or len(negative.split()) > len(positive.split()) + extra_words:
        return "bad_length"
    normed = norm(negative)
    if normed == norm(positive):
        return "equals_positive"
    head = head_noun(positive).replace("-", " ")
    if head and not any(f" {f} " in f" {normed} " for f in noun_forms(head)):
        return "head_noun_changed"
    return implausible(positive, negative)


def validate_negatives(positive: str, negatives: Sequence[str], min_chars: int = MIN_CHARS,
                       max_chars: int = MAX_CHARS, extra_words: int = EXTRA_WORDS) -> Optional[str]:
    """None when ``negatives`` are usable, else the reason they are not.

    Length bounds: ``min_chars..max_chars`` characters and at most ``extra_words`` words more
    than the positive (a negative changes attributes; it is not a new sentence). Every negative
    keeps the positive's head noun (spaCy's, or its singular/plural) and passes
    :func:`implausible`; the reason given is the first of ``VALIDATION_REASONS`` that applies.
    """
    if len(negatives) != NUM_NEGATIVES:
        return "wrong_count"
    max_words = len(positive.split()) + extra_words
    if any(not (min_chars <= len(n) <= max_chars) or len(n.split()) > max_words for n in negatives):
        return "bad_length"
    normed = [norm(n) for n in negatives]
    if len(set(normed)) != len(normed):
        return "duplicates"
    if norm(positive) in normed:
        return "equals_positive"
    head = head_noun(positive).replace("-", " ")
    if head:
        forms = noun_forms(head)
        if any(not any(f" {f} " in f" {n} " for f in forms) for n in normed):
            return "head_noun_changed"
    found = {implausible(positive, n) for n in negatives} - {None}
    return next((r for r in PLAUSIBILITY_REASONS if r in found), None)


def parse_answer(raw: Any) -> list[str]:
    """Cleaned candidate strings from an engine answer (JSON text or a list); raises SampleError."""
    items = raw
    if isinstance(raw, str):
        text = raw.strip()
        if text.startswith("```"):
            text = text.strip("`").split("\n", 1)[-1] if "\n" in text else text.strip("`")
        try:
            items = json.loads(text)
        except ValueError:
            start, end = text.find("["), text.rfind("]")
            try:
                items = json.loads(text[start:end + 1]) if 0 <= start < end else None
            except ValueError:
                items = None
            if items is None:
                raise SampleError("unparseable", f"not a JSON list: {raw[:120]!r}") from None
        if isinstance(items, dict):
            items = next((v for v in items.values() if isinstance(v, list)), None)
    if not isinstance(items, (list, tuple)) or not all(isinstance(i, str) for i in items):
        raise SampleError("unparseable", f"not a list of strings: {str(raw)[:120]!r}")
    # valid_text: a lone surrogate (a JSON "\\ud83d" from a model or a cache entry) would fail the shard write
    return [c for c in (clean_negative(valid_text(i)) for i in items) if c]


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


def negatives_for(engine: Any, expressions: Sequence[str], retries: int = 2,
                  cache: Optional[ModelCache] = None) -> list[NegativesResult]:
    """Ask ``engine`` for each distinct expression, retrying invalid answers with a new seed.

    With a ``cache`` (transforms.cache), valid negatives kept from an earlier run are used (after
    validating them again) and new valid ones are kept.
    """
    unique = list(dict.fromkeys(expressions))
    analyse_many(unique)  # parse the positives together (validation needs their head nouns)
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
        still = []
        for expr, raw in zip(pending, answers):
            res = results[expr]
            res.attempts = attempt + 1
            res.raw, res.detail = (None if isinstance(raw, Exception) else raw), ""
            try:
                if isinstance(raw, Exception):
                    raise raw
                res.negatives = parse_answer(raw)
                res.reason = validate_negatives(expr, res.negatives)
            except SampleError as e:
                res.reason, res.detail = e.reason, e.detail
            except Exception as e:  # noqa: BLE001 - any engine failure is a counted per-region reason
                res.reason, res.detail = "engine_error", f"{type(e).__name__}: {e}"
            res.valid = res.reason is None
            if not res.valid:
                still.append(expr)
        pending = still
    if cache is not None:
        cache.put_many(STAGE, {keys[e]: results[e].negatives for e in asked if results[e].valid})
    return [results[e] for e in expressions]


def apply_negatives(engine: Any, records: list[dict], retries: int = 2,
                    cache: Optional[ModelCache] = None) -> list[dict]:
    """Fill ``short_expr_negs``/``flag_short_neg`` of every region in the batch and count outcomes."""
    live = [rec for rec in records if Field.DEAD not in rec and Field.FILTERED not in rec]
    regions = [r for rec in live for r in rec.get("bbox_info", [])]
    results = negatives_for(engine, [r["short_expr"] for r in regions], retries=retries, cache=cache)
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
    return records


def invalid_negatives_diagnostic(res: NegativesResult) -> dict[str, Any]:
    """What ``diagnostics/`` keeps of a region whose negatives stayed invalid: reason, error, raw answer."""
    raw = res.raw if isinstance(res.raw, str) else json.dumps(res.raw, ensure_ascii=False) if res.raw else None
    return {"stage": STAGE, "expression": res.expression, "reason": res.reason, "detail": res.detail[:500],
            "raw_answer": raw[:2000] if raw else None, "attempts": res.attempts}


class GenerateNegatives(beam.PTransform):
    def __init__(self, spec: EngineSpec, batch_size: int = 16, retries: int = 2,
                 engine_options: Optional[dict[str, Any]] = None, cache_root: Optional[str] = None):
        super().__init__()
        self.spec, self.batch_size, self.retries = spec, batch_size, retries
        self.engine_options = engine_options
        self.cache_root = cache_root

    def expand(self, records: beam.PCollection) -> beam.PCollection:
        from apache_beam.ml.inference.base import RunInference  # seconds to import: not for the stage CLI

        from transforms.inference import EngineModelHandler

        apply = functools.partial(apply_negatives, retries=self.retries, cache=model_cache(self.cache_root))
        return records | "Negatives" >> RunInference(
            EngineModelHandler(NEGATIVE_ENGINES, self.spec, apply, batch_size=self.batch_size,
                               engine_options=self.engine_options))
