"""RulesNegatives: deterministic attribute edits from lexicons (no model; fast, free, the fallback).

The expression is parsed by spaCy (``stages.text.analyse``); its head noun is the root of its
first noun chunk, and the head's object kind (people, animals, plants, food, vehicles, furniture,
clothing, buildings, objects ... or unknown) says which attribute categories and words fit it
(``compatibility`` in ``prompts/negatives_lexicons.json``). One edit per negative:

- swap: an attribute word the expression has (before its head noun, after it as a pose like
  "lying", or on another noun: "a man in a blue shirt") becomes a word of another synonym group
  of the same category that fits the noun; the word keeps its slot;
- insert: an attribute the expression lacks goes into its English adjective-order slot
  (opinion, size, age, shape, colour, origin, material, purpose);
- count: the determiner or count word becomes another count and the head noun (never the last
  word) agrees: "a dog" -> "three dogs", "the man" -> "two men", "two dogs" -> "a dog", with
  "is" -> "are" in a relative clause on the head. Mass nouns ("the grass") are never counted.

Where single edits give fewer than ten negatives, pairs of edits of different categories follow.
A seeded shuffle (expression + attempt) picks which ten, so a retry gives a different set.
"""
from __future__ import annotations

import random
from typing import Any

from core.engines import EngineSpec, NegativesEngine
from stages.engines.negatives_edits import Edit, EditFinder, apply_edit
from stages.lexicons import UNKNOWN, Lexicons, lexicons
from stages.text import Phrase, analyse, analyse_many, norm

NUM = 10
_COUNT_CAP = 3  # count changes taken before every other category has given its edits
_INSERT_CAP = 2  # marked states ("a broken chair") likewise


class RulesNegatives(EditFinder, NegativesEngine):
    def __init__(self, spec: EngineSpec, **_: Any):
        self.lex: Lexicons = lexicons()
        self.provenance = {"engine": "rules", "model": f"lexicons:{self.lex.sha}", "lexicon_sha": self.lex.sha,
                           "stub": False}

    def generate(self, expressions: list[str], seed: int = 0) -> list[list[str]]:
        analyse_many(expressions)  # parse them together
        return [self.negatives(e, seed) for e in expressions]

    def _clash(self, phrase: Phrase, a: Edit, b: Edit) -> bool:
        """Two edits that contradict each other or write the same word ("a dead green tree"), or an insertion
        placed by a word's slot that the other edit moves ("plain horses": "spotted golden horses")."""
        wa, wb = _words_of(a), _words_of(b)
        if any(self.lex.clashes(w, frozenset(wb)) for w in wa):
            return True
        return bool((a.insert and self._reranks(phrase, b)) or (b.insert and self._reranks(phrase, a)))

    def _reranks(self, phrase: Phrase, edit: Edit) -> bool:
        rank = self.lex.word_rank
        return any(t and rank(t) is not None and rank(phrase.words[i].low) is not None
                   and rank(t) != rank(phrase.words[i].low) for i, t in edit.replace)

    def shortfall(self, expression: str) -> str:
        """Why the expression gets fewer than ten negatives ("" when it gets ten)."""
        phrase = analyse(expression)
        if phrase.head < 0:
            return "no head noun"
        got = len(self.negatives(expression))
        if got >= NUM:
            return ""
        if phrase.head in self._names(phrase):
            return f"{got} honest edits: a proper name is not edited"
        if self.lex.kind_of(phrase).kind == UNKNOWN:
            return f"{got} honest edits: the noun's kind is unknown, nothing states what to swap"
        return f"{got} honest edits: the expression states little to swap and nothing countable"

    def negatives(self, expression: str, seed: int = 0) -> list[str]:
        phrase = analyse(expression)
        if phrase.head < 0:
            return []
        edits = self.edits(phrase)
        rng = random.Random(f"rules:{seed}:{expression}")
        by_cat: dict[str, list[Edit]] = {}
        for e in edits:
            if e.honest:  # alone, only an edit no picture of the expression matches
                by_cat.setdefault(e.category, []).append(e)
        for cands in by_cat.values():
            rng.shuffle(cands)
        swapped = sorted(c for c, es in by_cat.items() if any(e.swap for e in es) and c != "count")
        inserted = sorted(c for c in by_cat if c not in swapped and c != "count")
        rng.shuffle(swapped)
        rng.shuffle(inserted)
        swapped += ["count"] if "count" in by_cat else []
        seen, out = {norm(expression)}, []

        def take(edit: Edit) -> None:
            text = apply_edit(phrase, edit)
            if norm(text) not in seen:
                seen.add(norm(text))
                out.append(text)

        # Round robin over categories so the ten vary: swaps of what the expression states first, a few
        # count changes and marked states (each a whole category of its own) after them, then any left.
        cats = swapped + inserted
        cap = {c: (_COUNT_CAP if c == "count" else _INSERT_CAP if c in inserted else NUM) for c in cats}
        for capped in (True, False):
            taken = dict.fromkeys(cats, 0)
            while len(out) < NUM and any(by_cat[c] and (not capped or taken[c] < cap[c]) for c in cats):
                for cat in cats:
                    if by_cat[cat] and len(out) < NUM and (not capped or taken[cat] < cap[cat]):
                        taken[cat] += 1
                        take(by_cat[cat].pop())
        if len(out) < NUM:  # few single edits: an honest edit with another one ("three gray dogs")
            pairs = [(a, b) for i, a in enumerate(edits) for b in edits[i + 1:] if a.honest or b.honest]
            rng.shuffle(pairs)
            for a, b in pairs:
                if len(out) >= NUM:
                    break
                if not a.conflicts(b) and not self._clash(phrase, a, b):
                    take(a.merged(b))
        return out


def _words_of(edit: Edit) -> set[str]:
    return {t.lower() for _, t in edit.replace if t} | {t.lower() for _, _, t in edit.insert}


def build(spec: EngineSpec, **options: Any) -> RulesNegatives:
    return RulesNegatives(spec, **options)
