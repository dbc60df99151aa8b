"""GenerateNegatives: 10 hard negatives per region expression, cleaned and validated.

Engines return raw answers (a JSON text, or a list of strings); this module owns the parsing,
the paper's symbol cleanup and the validation (exactly 10, pairwise distinct, none equal to the
positive, head noun kept, length bounds). An invalid answer is retried with a new seed; a region
whose answer stays invalid keeps ``flag_short_neg = 0`` and its reason is counted in
``rec[Field.STATS]`` (``negatives_invalid:<reason>``). The image is never lost over negatives.
"""
from __future__ import annotations

import functools
import hashlib
import json
import re
from dataclasses import dataclass, field
from typing import Any, Optional, Sequence

import apache_beam as beam

from core.engines import EngineEntry, EngineRegistry, EngineSpec, NegativesEngine
from core.record import Field, NUM_NEGATIVES, negatives_mapping
from prompts import load_prompt
from transforms.cache import ModelCache, digest, model_cache
from transforms.common import SampleError, bump

STAGE = "negatives"
PROMPT_FILE = "negatives.txt"
SCHEMA_FILE = "negatives.schema.json"
GRAMMAR_FILE = "negatives.gbnf"
LEXICONS_FILE = "negatives_lexicons.json"
MIN_CHARS, MAX_CHARS = 3, 120
EXTRA_WORDS = 6  # a negative may be this many words longer than its positive

NEGATIVE_ENGINES = EngineRegistry(STAGE, "negatives", NegativesEngine, {
    "stub": EngineEntry("model_stubs.negatives:build", False, False, "colour swaps; marked stub"),
    "rules": EngineEntry("transforms.engines.negatives_rules:build", False, False,
                         "deterministic attribute swaps from prompts/negatives_lexicons.json; no model"),
    "llama-cpp": EngineEntry("transforms.engines.negatives_llama_cpp:build", True, False,
                             "in-process llama-cpp-python on a GGUF with the GBNF grammar, "
                             "e.g. llama-cpp:/models/m.gguf?n_ctx=2048&n_threads=4"),
    "openai": EngineEntry("transforms.engines.negatives_openai:build", True, False,
                          "OpenAI-compatible server, e.g. openai:http://127.0.0.1:8000/v1?structured=auto#MODEL"),
    "vllm": EngineEntry("transforms.engines.negatives_vllm:build", True, True,
                        "in-process vllm.LLM with JSON-schema structured outputs, e.g. vllm:/models/llama"),
})

_NUMBERING = re.compile(r"^\s*(?:(?:negative|option|answer)\s*\d{0,2}\s*[:.)\]-]|\(?\d{1,2}\s*[.):\]-]|[-*\u2022])\s*",
                        re.IGNORECASE)
_SYMBOLS = re.compile(r"[;,\n\r\t\"\u201c\u201d\u2018\u2019`\[\]{}]+")
_ARTICLE = re.compile(r"^(?:a|an|the)\s+")
_HEAD_STOPS = ("in", "on", "at", "with", "of", "near", "next", "under", "behind", "beside", "that", "which",
               "who", "by", "from", "to", "above", "below", "over", "against", "holding", "wearing")


@dataclass(frozen=True)
class NegativesPrompt:
    """The prompt template, the output schema and grammar, and their hashes for provenance."""

    template: str
    schema: dict[str, Any]
    grammar: str
    prompt_sha: str
    schema_sha: str
    grammar_sha: str

    def messages(self, expression: str) -> list[dict[str, str]]:
        text = self.template.replace("{expression}", expression).replace("{head}", head_noun(expression))
        return [{"role": "user", "content": text}]

    def provenance(self) -> dict[str, str]:
        return {"prompt": PROMPT_FILE, "prompt_sha": self.prompt_sha, "schema_sha": self.schema_sha,
                "grammar_sha": self.grammar_sha}


@functools.lru_cache(maxsize=None)
def load_negatives_prompt() -> NegativesPrompt:
    template, prompt_sha = load_prompt(PROMPT_FILE)
    schema_text, schema_sha = load_prompt(SCHEMA_FILE)
    grammar, grammar_sha = load_prompt(GRAMMAR_FILE)
    return NegativesPrompt(template, json.loads(schema_text), grammar, prompt_sha, schema_sha, grammar_sha)


def request_seed(expression: str, attempt: int) -> int:
    """A sampling seed fixed by the expression and the attempt, whatever batch it lands in."""
    return int(hashlib.sha1(f"{attempt}:{expression}".encode("utf-8")).hexdigest()[:8], 16) & 0x7FFFFFFF


def clean_negative(text: str) -> str:
    """Drop the symbols the paper names (';' ',' newline), numbering, quotes and extra spaces."""
    text = _NUMBERING.sub("", str(text))
    text = _SYMBOLS.sub(" ", text)
    text = text.strip(" '.:!?")
    return " ".join(text.split())


def _norm(text: str) -> str:
    """Comparison form: lower case, single spaces, hyphens as spaces, no leading article."""
    return _ARTICLE.sub("", " ".join(text.lower().replace("-", " ").split()))


def head_noun(expression: str) -> str:
    """The last word of the expression's noun phrase (before any preposition or clause)."""
    words = re.findall(r"[A-Za-z][A-Za-z'-]*", expression.lower())
    for i, w in enumerate(words[1:], start=1):
        if w in _HEAD_STOPS:
            words = words[:i]
            break
    return words[-1] if words else ""


@functools.lru_cache(maxsize=1)
def irregular_plurals() -> dict[str, str]:
    """Singular -> plural for nouns whose plural is not regular (from the lexicons data file)."""
    return dict(json.loads(load_prompt(LEXICONS_FILE)[0]).get("irregular_plurals", {}))


def noun_forms(noun: str) -> set[str]:
    """The noun and its singular/plural forms (a count change may pluralise it)."""
    forms = {noun, noun + "s", noun + "es"}
    irregular = irregular_plurals()
    forms.update(p for s, p in irregular.items() if s == noun)
    forms.update(s for s, p in irregular.items() if p == noun)
    if noun.endswith("y"):
        forms.add(noun[:-1] + "ies")
    if noun.endswith("ies"):
        forms.add(noun[:-3] + "y")
    if noun.endswith("es"):
        forms.add(noun[:-2])
    if noun.endswith("s"):
        forms.add(noun[:-1])
    return forms


def validate_negatives(positive: str, negatives: Sequence[str], min_chars: int = MIN_CHARS,
                       max_chars: int = MAX_CHARS, extra_words: int = EXTRA_WORDS) -> Optional[str]:
    """None when ``negatives`` are usable, else the reason they are not.

    Length bounds: ``min_chars..max_chars`` characters and at most ``extra_words`` words more
    than the positive (a negative changes attributes; it is not a new sentence).
    """
    if len(negatives) != NUM_NEGATIVES:
        return "wrong_count"
    max_words = len(positive.split()) + extra_words
    if any(not (min_chars <= len(n) <= max_chars) or len(n.split()) > max_words for n in negatives):
        return "bad_length"
    normed = [_norm(n) for n in negatives]
    if len(set(normed)) != len(normed):
        return "duplicates"
    if _norm(positive) in normed:
        return "equals_positive"
    head = head_noun(positive).replace("-", " ")
    if head:
        forms = noun_forms(head)
        if any(not any(f" {f} " in f" {n} " for f in forms) for n in normed):
            return "head_noun_changed"
    return None


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
    return [c for c in (clean_negative(i) for i in items) if c]


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
    results = {e: NegativesResult(e) for e in unique}
    keys: dict[str, str] = {}
    if cache is not None:
        provenance = engine.get_provenance()
        keys = {e: cache.key(STAGE, provenance, digest(e)) for e in unique}
        hits = cache.get_many(STAGE, list(keys.values()))
        for e in unique:
            got = hits.get(keys[e])
            if isinstance(got, list) and all(isinstance(x, str) for x in got) and validate_negatives(e, got) is None:
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
