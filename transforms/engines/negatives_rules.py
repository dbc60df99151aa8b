"""RulesNegatives: deterministic attribute swaps from lexicons (no model; fast, free, the fallback).

Each known attribute word before the head noun (colour, material, pattern, size, shape, state,
count) is swapped for a word of another synonym group; attributes the expression lacks are
inserted in English adjective order (people get size and pose, animals colour, size, pattern and
pose, other things any category); a singular "a X" may become "two Xs". A seeded shuffle
(expression + attempt) picks which ten, so a retry gives a different set.
"""
from __future__ import annotations

import json
import random
import re
from typing import Any

from core.engines import EngineSpec
from prompts import load_prompt
from transforms.negatives import LEXICONS_FILE, head_noun
from transforms.text import norm

_VOWEL_SOUND = re.compile(r"^(?:[aeio]|u(?!ni|se|su|ro|ten|ti)|hour|honest|8|11|18)", re.IGNORECASE)


class Lexicons:
    """Attribute words by category and synonym group, loaded from ``prompts/negatives_lexicons.json``."""

    def __init__(self) -> None:
        text, self.sha = load_prompt(LEXICONS_FILE)
        data = json.loads(text)
        self.rank: dict[str, int] = data["adjective_rank"]
        self.categories: dict[str, list[list[str]]] = {c: data[c] for c in self.rank}
        self.insert_order: list[str] = data["insert_order"]
        self.insert_order_people: list[str] = data["insert_order_people"]
        self.insert_order_animals: list[str] = data["insert_order_animals"]
        self.people = frozenset(data["people_nouns"])
        self.animals = frozenset(data["animal_nouns"])
        self.determiners = frozenset(data["determiners"])
        self.singular = frozenset(data["singular_determiners"])
        self.irregular: dict[str, str] = data.get("irregular_plurals", {})
        self.word: dict[str, tuple[str, int]] = {}
        for cat, groups in self.categories.items():
            for g, words in enumerate(groups):
                for w in words:
                    self.word.setdefault(w, (cat, g))

    def plural(self, noun: str) -> str:
        if noun in self.irregular:
            return self.irregular[noun]
        if re.search(r"(?:s|x|z|ch|sh)$", noun):
            return noun + "es"
        if re.search(r"[^aeiou]y$", noun):
            return noun[:-1] + "ies"
        return noun + "s"


def _fix_article(words: list[str]) -> list[str]:
    if len(words) > 1 and words[0].lower() in ("a", "an"):
        article = "an" if _VOWEL_SOUND.match(words[1]) else "a"
        words = [article.capitalize() if words[0][0].isupper() else article] + words[1:]
    return words


class RulesNegatives:
    def __init__(self, spec: EngineSpec, **_: Any):
        self.lex = Lexicons()
        self.provenance = {"engine": "rules", "model": f"lexicons:{self.lex.sha}", "lexicon_sha": self.lex.sha,
                           "stub": False}

    def generate(self, expressions: list[str], seed: int = 0) -> list[list[str]]:
        return [self.negatives(e, seed) for e in expressions]

    def _candidates(self, words: list[str], head_i: int) -> dict[str, list[list[str]]]:
        """Edited word lists by the category they change."""
        lex = self.lex
        low = [w.lower() for w in words]
        found = {i: lex.word[low[i]] for i in range(head_i) if low[i] in lex.word}
        present = {cat for cat, _ in found.values()}
        out: dict[str, list[list[str]]] = {}
        for i, (cat, g) in found.items():
            for g2, group in enumerate(lex.categories[cat]):
                if g2 != g:
                    out.setdefault(cat, []).append(words[:i] + [group[0]] + words[i + 1:])
        head = low[head_i]
        order = (lex.insert_order_people if head in lex.people else
                 lex.insert_order_animals if head in lex.animals else lex.insert_order)
        for cat in order:
            if cat in present:
                continue
            at = 0
            while at < head_i and (low[at] in lex.determiners or
                                   (low[at] in lex.word and lex.rank[lex.word[low[at]][0]] <= lex.rank[cat])):
                at += 1
            for group in lex.categories[cat]:
                out.setdefault(cat, []).append(words[:at] + [group[0]] + words[at:])
        if "count" not in present and low[0] in lex.singular and low[0] not in ("the", "this", "that") and head_i > 0:
            plural = lex.plural(low[head_i])
            for group in lex.categories["count"]:
                out.setdefault("count", []).append([group[0]] + words[1:head_i] + [plural] + words[head_i + 1:])
        return out

    def negatives(self, expression: str, seed: int = 0) -> list[str]:
        words = expression.strip(" .,;:!?").split()
        if not words:
            return []
        head = head_noun(expression)
        low = [w.lower().strip(".,;:!?") for w in words]
        head_i = max((i for i, w in enumerate(low) if w == head), default=len(words) - 1)
        by_cat = self._candidates(words, head_i)
        rng = random.Random(f"rules:{seed}:{expression}")
        for cands in by_cat.values():
            rng.shuffle(cands)
        lows = set(low[:head_i])
        swapped = sorted(c for c in by_cat if any(self.lex.word.get(w, ("",))[0] == c for w in lows))
        inserted = sorted(c for c in by_cat if c not in swapped)
        rng.shuffle(swapped)
        rng.shuffle(inserted)
        cats = swapped + inserted  # swaps (harder negatives) come first in every round
        seen, out = {norm(expression)}, []
        # Round robin over categories so the ten negatives vary different attributes.
        while len(out) < 10 and any(by_cat[c] for c in cats):
            for cat in cats:
                if by_cat[cat] and len(out) < 10:
                    text = " ".join(_fix_article(by_cat[cat].pop()))
                    if norm(text) not in seen:
                        seen.add(norm(text))
                        out.append(text)
        return out


def build(spec: EngineSpec, **options: Any) -> RulesNegatives:
    return RulesNegatives(spec, **options)
