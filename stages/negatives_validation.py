"""What makes a usable hard negative: parsing an engine's answer, the paper's symbol cleanup, and the
validation of the negatives of one expression (exactly 10, pairwise distinct, none equal to the positive,
head noun kept, length bounds, and nothing an annotator would not write: a count word before a singular
noun, a verb made plural, a material on a person or animal; see :func:`implausible`).
"""
from __future__ import annotations

import functools
import json
import re
import unicodedata
from dataclasses import dataclass
from typing import Any, Optional, Sequence

from core.record import NUM_NEGATIVES, SampleError, valid_text
from stages.lexicons import ALL, UNKNOWN, lexicons
from stages.text import (ING_NOUNS, PLURAL_TAGS, analyse, head_noun, known_nouns, norm, plural_noun, singular_noun,
                         tokens)

MIN_CHARS, MAX_CHARS = 3, 120
EXTRA_WORDS = 6  # a negative may be this many words longer than its positive

_NUMBERING = re.compile(r"^\s*(?:(?:negative|option|answer)\s*\d{0,2}\s*[:.)\]-]|\(?\d{1,2}\s*[.):\]-]|#\d{1,2}\b[.):]?"
                        r"|\(?(?:[a-j]|[ivx]{1,4})[.)](?=\s)|[-*+\u2022\u2013\u2014])\s*", re.IGNORECASE)
_MARKDOWN = re.compile(r"(\*\*|__|\*|~~)")
_SYMBOLS = re.compile(r"[;,\n\r\t\"\u201c\u201d\u2018\u2019`\[\]{}]+")
PLAUSIBILITY_REASONS = ("plural_verb", "bad_plural", "count_without_plural", "plural_after_article", "material_on_living",
                        "pattern_on_living", "implausible_colour")
# what an annotator rejects besides: a list marker or an emoji left in, a negation, only synonyms changed, a part
ITEM_REASONS = ("stray_symbols", "negation", "part_of_object", "synonym_only")
VALIDATION_REASONS = ("wrong_count", "bad_length", "duplicates", "equals_positive", "head_noun_changed",
                      *ITEM_REASONS, *PLAUSIBILITY_REASONS)
_STRAY = re.compile(r"[#()\[\]{}<>*_|~^@$%=\\/]")


def clean_negative(text: str) -> str:
    """Drop the symbols the paper names (';' ',' newline), numbering, quotes and extra spaces."""
    text = str(text).strip()
    for _ in range(2):  # "**1.** a red chair", "1. **a red chair**"
        text = _MARKDOWN.sub("", _NUMBERING.sub("", text, count=1))
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
    allowed_colours: Optional[frozenset[str]]  # None: any colour fits the kind
    words: frozenset[str]  # every word of the positive
    canonical: tuple[str, ...]  # its words as synonyms stand for them, sorted, without articles
    after_head: str  # the word after the head ("" at the end)
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
    colours = lex.allowed(kind, "colour")
    allowed_colours = (None if colours == ALL or kind == UNKNOWN  # a colour the positive has licenses itself
                       else frozenset(colours or ()) | (zone & lex.colours))  # type: ignore[arg-type]
    return _Positive(head, frozenset(sing), frozenset(plur), kind, zone,
                     frozenset(verb_plurals - set(toks) - plur - sing), frozenset(other_plurals - set(toks)),
                     frozenset(allowed) if isinstance(allowed, tuple) else frozenset(),
                     allowed_colours, frozenset(toks), _canonical(toks),
                     toks[head_at + 1] if head_at + 1 < len(toks) else "",
                     material_ok=bool(zone & lex.materials), pattern_ok=bool(zone & lex.patterns),
                     mass=lex.is_mass(ph) and plural_noun(head).lower() != head and w is not None
                     and w.tag not in PLURAL_TAGS)


def _canonical(toks: Sequence[str]) -> tuple[str, ...]:
    """Words as their synonym group's first word, sorted, without articles and intensifiers ("a big couch"
    and "the large sofa" read the same)."""
    lex = lexicons()
    return tuple(sorted(lex.canonical(t) for t in toks if t not in ("a", "an", "the") and t not in lex.intensifiers))


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
    if info.allowed_colours is not None:
        odd = [t for t in zone if t in lex.colours and lex.canonical(t) not in info.allowed_colours
               and t not in info.allowed_colours]
        if odd:
            return "implausible_colour"  # "a purple dog", "a blue man", "green rice"
    return None


def negative_reason(positive: str, negative: str, min_chars: int = MIN_CHARS, max_chars: int = MAX_CHARS,
                    extra_words: int = EXTRA_WORDS) -> Optional[str]:
    """Why one negative is not usable for ``positive`` (None when it is); duplicates aside."""
    if not (min_chars <= len(negative) <= max_chars) or len(negative.split()) > len(positive.split()) + extra_words:
        return "bad_length"
    normed = norm(negative)
    if normed == norm(positive):
        return "equals_positive"
    if _STRAY.search(negative) or (not negative.isascii() and any(
            unicodedata.category(c)[0] in "SC" and c not in "'-&+" for c in negative)):
        return "stray_symbols"  # "a red chair #2", "a red chair \U0001FA91", "a chair (wooden)"
    forms = _head_forms(positive)
    if forms and not any(f" {f} " in f" {normed} " for f in forms):
        return "head_noun_changed"
    return _item_reason(positive, negative) or implausible(positive, negative)


@functools.lru_cache(maxsize=65536)
def _head_forms(positive: str) -> tuple[str, ...]:
    """The forms of the positive's head noun a negative must keep (none for an expression without a noun)."""
    head = head_noun(positive).replace("-", " ")
    return tuple(noun_forms(head)) if head else ()


def _item_reason(positive: str, negative: str) -> Optional[str]:
    """Negation, a part of the object instead of it, or only synonyms changed (see ``ITEM_REASONS``)."""
    lex, info, toks = lexicons(), _positive(positive), tokens(negative)
    if any(t in lex.negation_words and t not in info.words for t in toks):
        return "negation"  # "not a red wooden chair", "zero red chairs", "a chair without legs"
    at = next((i for i, t in enumerate(toks) if t in info.singular or t in info.plural), None)
    if at is not None and at + 1 < len(toks):
        nxt = toks[at + 1]
        singular, plural = known_nouns()
        if nxt != info.after_head and nxt not in lex.word and (nxt in lex.part_words or nxt in singular
                                                                or nxt in plural):
            return "part_of_object"  # "a red wooden chair leg", "a dog bed"
    if len(toks) >= len(info.canonical) and _canonical(toks) == info.canonical:
        return "synonym_only"  # "a big couch" for "a large sofa", "one red chair" for "a red chair"
    return None


def negative_reasons(positive: str, negatives: Sequence[str]) -> list[Optional[str]]:
    """The reason of each negative (None: usable); a repeat of an earlier one is ``duplicates``."""
    seen = {norm(positive)}
    out: list[Optional[str]] = []
    for n in negatives:
        normed = norm(n)
        out.append("duplicates" if normed in seen and normed != norm(positive) else negative_reason(positive, n))
        seen.add(normed)
    return out


def merge_answers(positive: str, kept: Sequence[str], new_items: Sequence[str], want: int = NUM_NEGATIVES) -> list[str]:
    """``kept`` (usable negatives from earlier answers) topped up with the usable new ones, at most ``want``.

    A partly valid answer loses only its faulty items; a retry only has to give the missing ones.
    """
    out = list(kept)[:want]
    seen = {norm(n) for n in out} | {norm(positive)}
    for item in new_items:
        if len(out) >= want:
            break
        normed = norm(item)
        if normed not in seen and negative_reason(positive, item) is None:
            out.append(item)
            seen.add(normed)
    return out


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
    return first_reason(negative_reasons(positive, negatives))


def first_reason(reasons: Sequence[Optional[str]]) -> Optional[str]:
    """The first of ``VALIDATION_REASONS`` among ``reasons`` (None if there is none)."""
    found = set(reasons) - {None}
    return next((r for r in VALIDATION_REASONS if r in found), None)


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
