"""Text helpers the text stages share (hard negatives, their validation and every negatives engine).

- :func:`norm`: the comparison form of an expression.
- :func:`analyse`: an expression parsed by spaCy (the pipeline of ``stages.expressions``) into
  whitespace words with their tag, dependency and head, plus the head noun: the last noun of the
  noun phrase that opens the expression, which is spaCy's first noun chunk root where the small
  model parses the phrase right ("a man riding a horse" -> "man", "a black dog lying on the grass"
  -> "dog", "a duck swimming in a pond" -> "duck", where the model makes "swimming" the root).
- Inflection with the ``inflect`` library: noun plural and singular ("person" <-> "people",
  "mouse" <-> "mice", "sheep" <-> "sheep"), verb number ("is" <-> "are", "sleeps" <-> "sleep"),
  and the indefinite article ("an old man", "a university").

spaCy and inflect load lazily, once per process; analyses are cached per expression.
"""
from __future__ import annotations

import functools
import json
import re
import sys
from dataclasses import dataclass
from typing import Any, Iterable, Optional, Sequence

_ARTICLE = re.compile(r"^(?:a|an|the)\s+")
_EDGE = " \t\r\n.,;:!?\"'"
_TOKEN = re.compile(r"[a-z0-9]+(?:['-][a-z0-9]+)*")
# Fallback head finder (no noun at all): the last word before a preposition, clause or participle.
_HEAD_STOPS = frozenset(("in", "on", "at", "with", "of", "near", "next", "under", "behind", "beside", "that", "which",
                         "who", "by", "from", "to", "above", "below", "over", "against", "holding", "wearing"))
_VOWEL_DIGITS = re.compile(r"^(?:8|11|18)")
_VERB_SG = {"are": "is", "were": "was", "have": "has", "do": "does"}
_VERB_PL = {v: k for k, v in _VERB_SG.items()}
NOUN_TAGS = ("NN", "NNS", "NNP", "NNPS")
# -ing words that are nouns; any other one after a noun is that noun's participle ("a duck swimming")
ING_NOUNS = frozenset(("building", "painting", "drawing", "ceiling", "clothing", "ring", "king", "wing", "string", "swing",
                       "thing", "spring", "sibling", "pudding", "icing", "frosting", "railing", "awning", "wedding",
                       "bedding", "carving", "earring", "evening", "morning", "stocking", "sling", "dumpling", "lighting",
                       "crossing", "opening", "meeting", "parking", "wrapping", "stuffing", "seating", "ping", "sing",
                       "ceiling", "dressing", "filling", "topping", "setting", "sibling", "fitting", "coating", "shilling",
                       "duckling", "gosling", "seedling", "sapling", "herring", "whiting", "viking", "pudding", "wing"))
PLURAL_TAGS = ("NNS", "NNPS")


_PUNCT = re.compile(r"[.,;:!?\"]+")


@functools.lru_cache(maxsize=262144)
def norm(text: str) -> str:
    """Comparison form: lower case, single spaces, hyphens as spaces, no punctuation or leading article."""
    return _ARTICLE.sub("", " ".join(_PUNCT.sub(" ", text.lower().replace("-", " ")).split()))


def tokens(text: str) -> list[str]:
    """Lower-case words of ``text`` for checks; a hyphenated word stays one ("t-shirt", "red-winged")."""
    return _TOKEN.findall(text.lower())


def clean_words(expression: str) -> list[str]:
    """The expression's whitespace words, without punctuation at either end of the expression."""
    return expression.strip(_EDGE).split()


@dataclass(frozen=True)
class Word:
    """One whitespace word and what spaCy says of its main token (the one attached outside the word)."""

    text: str
    tag: str
    pos: str
    dep: str
    lemma: str
    head: int  # word index of the syntactic head (its own index for the root)

    @functools.cached_property
    def low(self) -> str:
        """Lower case, without punctuation at either end ("cat," -> "cat")."""
        return self.text.lower().strip(_EDGE) or self.text.lower()


@dataclass(frozen=True)
class Phrase:
    """A parsed expression: words, the head noun and the noun chunks, all in word indices."""

    text: str
    words: tuple[Word, ...]
    head: int  # word index of the head noun, -1 for an empty expression
    start: int  # first word of the head's noun chunk (its determiner, if any)
    chunks: tuple[tuple[int, int, int], ...]  # (start, end, root) of each noun chunk

    @property
    def head_word(self) -> str:
        return self.words[self.head].low if self.head >= 0 else ""

    @property
    def plural(self) -> bool:
        return self.head >= 0 and self.words[self.head].tag in PLURAL_TAGS

    def children(self, i: int) -> list[int]:
        return [j for j, w in enumerate(self.words) if w.head == i and j != i]


def _load_nlp() -> Any:
    from stages.expressions import load_nlp

    return load_nlp()


_CACHE: dict[str, Phrase] = {}
_CACHE_MAX = 200_000


def _fallback_head(words: Sequence[str]) -> int:
    low = [w.lower().strip(_EDGE) for w in words]
    end = len(low)
    for i, w in enumerate(low[1:], start=1):
        if w in _HEAD_STOPS:
            end = i
            break
    return end - 1


@functools.lru_cache(maxsize=1)
def _lexicon_data() -> dict[str, Any]:
    from prompts import load_prompt

    return json.loads(load_prompt("negatives_lexicons.json")[0])


@functools.lru_cache(maxsize=1)
def known_nouns() -> tuple[frozenset[str], frozenset[str]]:
    """(singular, plural) forms of the one-word nouns of the lexicons' object kinds.

    They correct the small model's tagger where it slips on a bare phrase ("geese" as an
    adjective, "hydrant" as an adverb).
    """
    data = _lexicon_data()
    singular = frozenset(n for nouns in data.get("kinds", {}).values() for n in nouns if " " not in n)
    plural_only = frozenset(data.get("plural_only", ()))
    plural = frozenset(plural_noun(n) for n in singular if n not in plural_only) | plural_only
    return singular - plural_only, plural


_RUN_TAGS = frozenset(("DT", "PDT", "PRP$", "CD", "JJ", "JJR", "JJS", "NN", "NNS", "NNP", "NNPS", "HYPH", "POS", "AFX"))


@functools.lru_cache(maxsize=1)
def attribute_words() -> frozenset[str]:
    """Every attribute word of the lexicons ("orange", "striped", "parked")."""
    data = _lexicon_data()
    cats = list(data.get("categories", ())) + list(data.get("order_only", ()))
    return frozenset(w for c in cats for g in data.get(c, ()) for w in g)


def _is_noun(tok: Any) -> bool:
    singular, plural = known_nouns()
    low = tok.text.lower()
    nxt = tok.nbor(1) if tok.i + 1 < len(tok.doc) else None
    if low in attribute_words() and nxt is not None and (
            nxt.tag_ in NOUN_TAGS + ("JJ", "JJR", "JJS", "VBN", "VBD", "HYPH") or nxt.text.lower() in attribute_words()
            or nxt.text.lower() in singular or nxt.text.lower() in plural):
        return False  # "a large purple striped square", "an orange cat": the colour, not the fruit
    return tok.tag_ in NOUN_TAGS or low in singular or low in plural or low in ING_NOUNS


def _head_token(doc: Any) -> tuple[int, int]:
    """(first, head) token indices of the noun phrase that opens the expression.

    The phrase runs over determiners, numbers, adjectives, nouns and prenominal participles
    ("a parked red car") and ends at a preposition, a clause, a conjunction between nouns, or a
    participle after a noun ("a duck swimming in a pond", "an elephant spraying water": the
    small model makes "swimming" or "water" the root there). The head is its last noun; -1 if
    it has none.
    """
    toks = list(doc)
    first = 0
    while first < len(toks) and (toks[first].is_punct or toks[first].is_space):
        first += 1
    head, prev_noun = -1, False
    quantifiers = frozenset(_lexicon_data().get("quantifier_nouns", ()))
    for k in range(first, len(toks)):
        tok = toks[k]
        low = tok.text.lower()
        nxt = toks[k + 1] if k + 1 < len(toks) else None
        if low == "of" and head == k - 1 and toks[head].text.lower() in quantifiers:
            head, prev_noun = -1, False  # "dozens of birds", "a couple of dogs": the head comes after "of"
            continue
        verb_ing = prev_noun and low.endswith("ing") and (
            low not in ING_NOUNS or (nxt is not None and nxt.tag_ in ("DT", "PRP$", "CD")))  # "a train crossing a bridge"
        if _is_noun(tok) and not verb_ing:
            head, prev_noun = k, True
            continue
        if tok.tag_ in ("VBG", "VBN", "VBD") or low.endswith("ing"):
            if k > 0 and toks[k - 1].tag_ == "HYPH" and not toks[k - 1].whitespace_ and nxt is not None:
                prev_noun = False  # "a half-eaten sandwich": the participle ends a hyphenated modifier
                continue
            if prev_noun or nxt is None:
                break  # "a dog sleeping", "a man dressed in black"
            prev_noun = False
            continue  # "a sleeping dog", "a parked car"
        if tok.tag_ == "CC":
            if head < 0 and nxt is not None and nxt.tag_ in ("JJ", "JJR", "JJS"):
                continue  # "a black and white dog"
            break
        if tok.tag_ == "RB" and nxt is not None and nxt.tag_ in ("JJ", "JJR", "JJS", "VBN", "RB"):
            continue  # "a very small dog"
        if tok.tag_ in _RUN_TAGS or tok.dep_ == "poss" or low == "'s":
            prev_noun = prev_noun and tok.tag_ in ("HYPH", "POS")
            continue
        break
    return first, head


def _phrase(text: str, doc: Any) -> Phrase:
    raw = text.split(" ") if text else []
    starts, pos = [], 0
    for w in raw:
        starts.append(pos)
        pos += len(w) + 1
    tok_word = {}
    for tok in doc:
        i = max(k for k, s in enumerate(starts) if s <= tok.idx)
        tok_word[tok.i] = i
    main: dict[int, Any] = {}
    for tok in doc:
        i = tok_word[tok.i]
        outside = tok.head.i == tok.i or tok_word[tok.head.i] != i
        if i not in main or (outside and not (main[i].head.i == main[i].i or tok_word[main[i].head.i] != i)):
            main[i] = tok
    words = [Word(w, main[i].tag_, main[i].pos_, main[i].dep_, main[i].lemma_.lower(), tok_word[main[i].head.i])
             for i, w in enumerate(raw)]
    chunks = []
    for ch in doc.noun_chunks:
        root = ch.root
        if root.pos_ not in ("NOUN", "PROPN") or root.tag_ in ("PRP", "PRP$", "WP", "WDT", "EX"):
            continue
        first = ch.start
        while first < ch.end - 1 and (doc[first].is_punct or doc[first].is_space):
            first += 1
        chunks.append((tok_word[first], tok_word[ch.end - 1] + 1, tok_word[root.i]))
    first, head_tok = _head_token(doc) if len(doc) else (0, -1)
    if head_tok >= 0:
        start, head = tok_word[first], tok_word[head_tok]
        chunks = [(start, head + 1, head)] + [c for c in chunks if c[0] > head]
        w = words[head]
        singular, plural = known_nouns()
        if w.tag not in NOUN_TAGS or (w.low in plural and w.low not in singular and w.tag not in PLURAL_TAGS):
            tag = "NNS" if w.low in plural and w.low not in singular else "NN"  # the tagger slipped
            lemma = singular_noun(w.low, w.lemma) if tag == "NNS" else w.low
            words[head] = Word(w.text, tag, "NOUN", w.dep, lemma.lower(), w.head)
    elif chunks:
        start, _, head = chunks[0]
    elif words:
        start, head = 0, _fallback_head(raw)
    else:
        start, head = 0, -1
    return Phrase(text, tuple(words), head, start, tuple(chunks))


def analyse_many(expressions: Iterable[str]) -> list[Phrase]:
    """:func:`analyse` for many expressions, the new ones parsed together with ``nlp.pipe``."""
    texts = [" ".join(clean_words(e)) for e in expressions]
    todo = list(dict.fromkeys(t for t in texts if t not in _CACHE))
    if todo:
        if len(_CACHE) + len(todo) > _CACHE_MAX:
            _CACHE.clear()
        for t, doc in zip(todo, _load_nlp().pipe(todo, batch_size=256)):
            _CACHE[t] = _phrase(t, doc)
    return [_CACHE[t] for t in texts]


def analyse(expression: str) -> Phrase:
    """The expression parsed (cached): words with tags and heads, the head noun, the noun chunks."""
    return analyse_many([expression])[0]


def head_noun(expression: str) -> str:
    """The expression's head noun in lower case ("a man riding a horse" -> "man"); see :func:`analyse`."""
    return analyse(expression).head_word


@functools.lru_cache(maxsize=None)
def _inflect() -> Any:
    """inflect's engine, imported lazily (only where negatives are made or checked) and without typeguard.

    inflect >= 7.2 decorates its methods with typeguard's ``@typechecked``, which re-parses and
    recompiles them when the module is imported: 1-3 s per process on these machines
    (jaraco/inflect#212), and a type check on every call. Every call here passes a ``str``, so the
    decorator is swapped for the identity while inflect is imported; the functions are the same.
    """
    if "inflect" not in sys.modules:
        import typeguard

        checked = typeguard.typechecked
        typeguard.typechecked = _unchecked
        try:
            import inflect
        finally:
            typeguard.typechecked = checked
    import inflect

    return inflect.engine()


def _unchecked(target: Any = None, **_: Any) -> Any:
    """``typeguard.typechecked`` that checks nothing (used as ``@typechecked`` or ``@typechecked(...)``)."""
    return target if target is not None else (lambda f: f)


@functools.lru_cache(maxsize=65536)
def plural_noun(noun: str) -> str:
    """The plural of a singular noun ("dog" -> "dogs", "person" -> "people", "sheep" -> "sheep")."""
    if not noun or not noun[-1].isalpha():
        return noun
    return _inflect().plural_noun(noun) or noun


@functools.lru_cache(maxsize=65536)
def singular_noun(noun: str, lemma: Optional[str] = None) -> str:
    """The singular of a plural noun ("people" -> "person", "mice" -> "mouse"); the noun if none is found."""
    if not noun or not noun[-1].isalpha():
        return noun
    low = noun.lower()
    for cand in (_inflect().singular_noun(noun) or None, lemma):
        if cand and plural_noun(cand).lower() == low:
            return cand
    return noun


@functools.lru_cache(maxsize=65536)
def indefinite_article(word: str) -> str:
    """"a" or "an" before ``word`` ("an old", "a university", "an hour", "an 8")."""
    if not word:
        return "a"
    if word[0].isdigit():
        return "an" if _VOWEL_DIGITS.match(word) else "a"
    return _inflect().a(word).split(" ", 1)[0].lower()


def plural_verb(verb: str) -> str:
    """Third person singular -> plural ("is" -> "are", "sleeps" -> "sleep", "has" -> "have")."""
    low = verb.lower()
    if low in _VERB_PL:
        return _VERB_PL[low]
    if low == "was":
        return "were"
    return _inflect().plural_verb(verb) or verb


def singular_verb(verb: str) -> str:
    """Plural -> third person singular ("are" -> "is", "sleep" -> "sleeps", "carry" -> "carries")."""
    low = verb.lower()
    if low in _VERB_SG:
        return _VERB_SG[low]
    if low == "were":
        return "was"
    if re.search(r"(?:s|x|z|ch|sh|o)$", low):
        return verb + "es"
    if re.search(r"[^aeiou]y$", low):
        return verb[:-1] + "ies"
    return verb + "s"
