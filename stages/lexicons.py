"""Attribute lexicons and the object-kind compatibility table (``prompts/negatives_lexicons.json``).

Shared by the rules negatives engine (what to swap or insert, and where) and by the validation
every engine's answers go through (what no annotator would write: a material on a person).

- Attribute categories (colour, size, dimension, age, shape, state, pose, pattern, material,
  count) are lists of synonym groups; opinion and origin words are known only for word order.
- ``adjective_order``: English order of prenominal modifiers; a word's slot is its category's
  (or its ``rank_overrides`` entry: "plain" sits before the colour).
- ``kinds``: nouns of each object kind; the head noun's kind is looked up with up to two words
  before it first ("hot dog" is food, "teddy bear" an object), a living noun after an artifact
  modifier ("a toy dog", "a wooden horse") is a toy, any other noun is ``unknown``.
- ``compatibility``: per kind, the categories it takes and which words ("*" = all);
  ``swap_only``: those it takes only where the expression has one; ``pattern_nouns`` and
  ``fixed_look``: which animals a pattern or colour may be given.
"""
from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from typing import Optional

from prompts import load_prompt
from stages.text import PLURAL_TAGS, Phrase, plural_noun, singular_noun

LEXICONS_FILE = "negatives_lexicons.json"
ALL = "*"
UNKNOWN = "unknown"


@dataclass(frozen=True)
class Kind:
    """The head noun's object kind and the word where its name starts ("hot dog": at "hot")."""

    kind: str
    name_start: int


class Lexicons:
    """Attribute words by category and synonym group, the noun kinds and what each kind takes."""

    def __init__(self) -> None:
        text, self.sha = load_prompt(LEXICONS_FILE)
        data = json.loads(text)
        self.attribute_categories: list[str] = data["categories"]
        self.categories: dict[str, list[list[str]]] = {c: data[c] for c in self.attribute_categories + data["order_only"]}
        self.order: dict[str, int] = {c: i for i, c in enumerate(data["adjective_order"])}
        self.rank_overrides: dict[str, str] = data["rank_overrides"]
        self.insert_order: list[str] = data["insert_order"]
        self.postnominal_only = frozenset(data["postnominal_only"])
        self.not_on_mass = frozenset(data["not_on_mass"])
        self.compat: dict[str, dict[str, object]] = {
            kind: {cat: (ALL if words == ALL else tuple(words)) for cat, words in table.items()}
            for kind, table in data["compatibility"].items()}
        self.swap_only: dict[str, frozenset[str]] = {k: frozenset(v) for k, v in data["swap_only"].items()}
        self.pattern_nouns: dict[str, frozenset[str]] = {p: frozenset(v) for p, v in data["pattern_nouns"].items()}
        self.fixed_look = frozenset(data["fixed_look"])
        self.possessives = frozenset(data["possessives"])
        self.quantifier_nouns = frozenset(data["quantifier_nouns"])
        self.moving_poses = frozenset(data["moving_poses"])
        self.motion_words = frozenset(data["motion_words"])
        self.living = frozenset(data["living_kinds"])
        self.artifactable = frozenset(("plants", "plant_parts", "flowers", "produce", "dishes", "foodstuff"))
        self.artifact_modifiers = frozenset(data["artifact_modifiers"])
        self.noun_kind: dict[str, str] = {n: kind for kind, nouns in data["kinds"].items() for n in nouns}
        self.mass = frozenset(data["mass_nouns"])
        self.plural_only = frozenset(data["plural_only"])
        self.alternative_plurals: dict[str, list[str]] = data["alternative_plurals"]
        self.determiners = frozenset(data["determiners"])
        self.singular_determiners = frozenset(data["singular_determiners"])
        self.count_replaces = frozenset(data["count_replaces"])
        self.plural_counts = frozenset(data["plural_counts"])
        self.quantity_nouns = frozenset(data["quantity_nouns"])
        self._index_words()
        self.marked: dict[str, frozenset[str]] = {k: frozenset(v) for k, v in data["marked"].items()}
        self._read_relations(data)
        self.materials_for: dict[str, frozenset[str]] = {n: frozenset(v) for n, v in data["materials_for"].items()}
        self.colours_for: dict[str, frozenset[str]] = {n: frozenset(v) for n, v in data["colours_for"].items()}
        self.action_swaps: dict[str, dict[str, list[str]]] = data["action_swaps"]
        self.preposition_swaps: dict[str, str] = data["preposition_swaps"]
        self.under_kinds = frozenset(data["under_kinds"])
        self.negation_words = frozenset(data["negation_words"])
        self.intensifiers = frozenset(data["intensifiers"])
        self.synonym: dict[str, str] = {w: g[0] for g in data["synonyms"] for w in g}
        self.part_words = frozenset(data["part_words"])
        self.contrast_only = frozenset(data["contrast_only"])
        self.explicit_only = frozenset(data["explicit_only"])

    def _index_words(self) -> None:
        """Each attribute word's category and synonym group, and the word sets the checks look in."""
        self.word: dict[str, tuple[str, int]] = {}
        for cat, groups in self.categories.items():
            for g, words in enumerate(groups):
                for w in words:
                    self.word.setdefault(w, (cat, g))
        self.materials = frozenset(w for g in self.categories["material"] for w in g)
        self.patterns = frozenset(w for g in self.categories["pattern"] for w in g)
        self.count_words = frozenset(w for g in self.categories["count"] for w in g)
        self.pose_words = frozenset(w for g in self.categories["pose"] for w in g)
        self.colours = frozenset(w for g in self.categories["colour"] for w in g)

    def _read_relations(self, data: dict) -> None:
        """Words that never go together (both ways), and the relation objects a swap may exchange ("holding a
        balloon" -> "holding a kite"): each group's words, the words they may follow, and by noun its groups."""
        self.conflicts: dict[str, frozenset[str]] = {}
        for a, b in data["conflicts"]:
            self.conflicts[a] = self.conflicts.get(a, frozenset()) | {b}
            self.conflicts[b] = self.conflicts.get(b, frozenset()) | {a}
        self.relation_groups: list[tuple[str, ...]] = [tuple(g["words"]) for g in data["relation_objects"]]
        self.relation_after: list[frozenset[str]] = [frozenset(g["after"]) for g in data["relation_objects"]]
        self.relation_the_only: list[bool] = [bool(g.get("the_only")) for g in data["relation_objects"]]
        self.relation_heads: list[Optional[frozenset[str]]] = [
            frozenset(g["head_kinds"]) if "head_kinds" in g else None for g in data["relation_objects"]]
        self.relation_of: dict[str, list[int]] = {}
        for g, nouns in enumerate(self.relation_groups):
            for n in nouns:
                self.relation_of.setdefault(n, []).append(g)

    # -- word order -------------------------------------------------------------------------------
    def rank(self, category: str) -> int:
        return self.order[category]

    def word_rank(self, word: str) -> Optional[int]:
        """The slot of a known attribute word (its override or its category's), None if unknown."""
        low = word.lower()
        if low in self.rank_overrides:
            return self.order[self.rank_overrides[low]]
        found = self.word.get(low)
        return self.order[found[0]] if found else None

    # -- what fits what ---------------------------------------------------------------------------
    def allowed(self, kind: str, category: str) -> object:
        """ALL, the tuple of words the kind takes in ``category``, or None when it takes none."""
        return self.compat.get(kind, self.compat[UNKNOWN]).get(category)

    def insertable(self, kind: str, category: str, noun: str) -> object:
        """What :meth:`allowed` gives for inserting ``category`` before ``noun``, None where it may only be swapped.

        On an animal a colour or pattern goes only where the coat varies ("a spotted dog", never
        "a spotted zebra" or "a brown zebra"), a pattern only where the animal can have it.
        """
        if category in self.swap_only.get(kind, ()):
            return None
        if kind in self.living and category in ("colour", "pattern") and noun in self.fixed_look:
            return None
        return self.swappable(kind, category, noun)

    def swappable(self, kind: str, category: str, noun: str) -> object:
        """What :meth:`allowed` gives for swapping a word of ``category`` before ``noun``.

        A pattern on an animal only where the animal can have it ("plain horses" -> "spotted
        horses", never "striped horses").
        """
        allowed = self.allowed(kind, category)
        only = (self.materials_for if category == "material" else self.colours_for if category == "colour" else {})
        if allowed is not None and noun in only:
            return tuple(w for g in self.categories[category] for w in g if w in only[noun]
                         and (allowed == ALL or w in allowed)) or None  # type: ignore[operator]
        if allowed is not None and kind in self.living and category == "pattern":
            allowed = tuple(w for w in allowed if noun in self.pattern_nouns.get(w, ()))  # type: ignore[union-attr]
            return allowed or None
        return allowed

    def canonical(self, word: str) -> str:
        """The word a synonym stands for ("big" -> "large", "grey" -> "gray", "couch" -> "sofa")."""
        low = word.lower()
        if low in self.synonym:
            return self.synonym[low]
        found = self.word.get(low)
        return self.categories[found[0]][found[1]][0] if found else low

    def clashes(self, word: str, words: "set[str] | frozenset[str]") -> bool:
        """``word`` contradicts or repeats one of ``words`` ("dead" and "green"; "sandy" and "sand")."""
        low = word.lower()
        if low in words or self.conflicts.get(low, frozenset()) & words:
            return True
        stem = low.split("-")[0].removesuffix("y")  # "sandy" -> "sand", "snowy" -> "snow", "icy" -> "ic"
        return len(stem) >= 2 and any(w.startswith(stem) and len(w) <= len(stem) + 2 for w in words if w != low)

    def contrasts(self, old: str, new: str) -> bool:
        """``new`` contradicts ``old`` (other colours do; "hot" and "half-eaten" do not: see conflicts)."""
        found = self.word.get(old.lower())
        if found is None or found[0] not in self.contrast_only:
            return True
        return self.canonical(new) in self.conflicts.get(self.canonical(old), frozenset())

    def allows(self, kind: str, category: str, word: str) -> bool:
        allowed = self.allowed(kind, category)
        return allowed is not None and (allowed == ALL or word.lower() in allowed)

    def written(self, kind: str, category: str, group: int, mass: bool = False) -> Optional[str]:
        """The word written for synonym group ``group`` on a noun of ``kind`` (None: none fits)."""
        for w in self.categories[category][group]:
            if self.allows(kind, category, w) and not (mass and w in self.not_on_mass) and not (
                    w in self.explicit_only and self.allowed(kind, category) == ALL):
                return w
        return None

    def kind_of(self, phrase: Phrase) -> Kind:
        """The head noun's kind from the noun lists (multi-word names first), artifacts as objects."""
        h = phrase.head
        if h < 0:
            return Kind(UNKNOWN, h)
        words = phrase.words
        forms = [words[h].low]
        if words[h].tag in PLURAL_TAGS and words[h].low not in self.plural_only:
            forms.append(singular_noun(words[h].low, words[h].lemma).lower())
        forms.append(words[h].lemma)
        kind, name_start = UNKNOWN, h
        for n in (3, 2, 1):
            if h - n < phrase.start:
                continue
            mods = [w.low for w in words[h - n:h]]
            hit = next((self.noun_kind[k] for k in (" ".join(mods + [f]) for f in forms) if k in self.noun_kind), None)
            if hit:
                kind, name_start = hit, h - n
                break
        else:
            kind = next((self.noun_kind[f] for f in forms if f in self.noun_kind), UNKNOWN)
        if kind in self.living or kind in self.artifactable:
            if any(words[i].low in self.artifact_modifiers for i in range(phrase.start, name_start)):
                kind = "toys"
        return Kind(kind, name_start)

    def is_mass(self, phrase: Phrase) -> bool:
        """A head that takes no count: a mass noun, a plural-only noun, a proper noun, a bare singular."""
        h = phrase.head
        if h < 0:
            return True
        w = phrase.words[h]
        if w.low in self.plural_only or (w.tag in ("NNP", "NNPS") and w.text[:1].isupper()):
            return True  # a name ("Big Ben"); a lower-case word tagged NNP is the tagger's slip ("a teddy bear")
        sing = singular_noun(w.low, w.lemma).lower() if w.tag in PLURAL_TAGS else w.low
        if sing in self.mass or w.lemma in self.mass:
            return w.tag not in PLURAL_TAGS
        if w.tag in PLURAL_TAGS:
            return False
        has_det = any(x.dep in ("det", "poss", "nummod", "predet") or x.tag in ("CD", "PRP$", "POS") or
                      x.low in self.determiners or x.low in self.count_words
                      for x in phrase.words[phrase.start:h])
        return not has_det and plural_noun(w.low).lower() != w.low  # "sheep grazing" is counted

    def is_plural_count(self, token: str) -> bool:
        """A word that needs a plural noun after it ("two", "several", "12")."""
        return token in self.plural_counts or (token.isdigit() and int(token) >= 2)


@functools.lru_cache(maxsize=1)
def lexicons() -> Lexicons:
    return Lexicons()
