"""The edits of the rules negatives engine (``stages.engines.negatives_rules``): :class:`Edit`, one change
to an expression's words; :func:`apply_edit`; and :class:`EditFinder`, every single edit that fits an
expression's parse (swaps of what it states, insertions in adjective order, count changes, relation objects,
attributes of its other nouns).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Optional

from stages.lexicons import ALL, UNKNOWN, Lexicons
from stages.text import PLURAL_TAGS, Phrase, indefinite_article, plural_noun, plural_verb, singular_noun, singular_verb

_RELATIVE = ("that", "which", "who")
_DET_RANK = -1  # a determiner inserted by a count change goes before everything


@dataclass(frozen=True)
class Edit:
    """One change to the expression's words, on the original word indices."""

    category: str  # round-robin key: "colour", "count", "colour@3" (an attribute of another noun)
    swap: bool  # changes something the expression has (a harder negative than an insertion)
    replace: tuple[tuple[int, str], ...] = ()  # (word index, new text)
    insert: tuple[tuple[int, float, str], ...] = ()  # (before word index, adjective rank, text)
    honest: bool = True  # false for any picture of the expression (False: a picture may still match it)

    def conflicts(self, other: "Edit") -> bool:
        if self.category.split("@")[0] == other.category.split("@")[0]:
            return True
        touched = {i for i, _ in self.replace}
        return any(i in touched for i, _ in other.replace)

    def merged(self, other: "Edit") -> "Edit":
        return Edit(f"{self.category}+{other.category}", self.swap or other.swap,
                    self.replace + other.replace, self.insert + other.insert, self.honest or other.honest)


def _fix_articles(words: list[str]) -> list[str]:
    """"a"/"an" agree with the word after them, wherever they are."""
    out = list(words)
    for i in range(len(out) - 1):
        if out[i].lower() in ("a", "an"):
            article = indefinite_article(out[i + 1])
            out[i] = article.capitalize() if out[i][0].isupper() else article
    return out


def _inflected(word: str, inflect: Any) -> str:
    """``inflect`` applied to the word without its trailing punctuation ("cat," -> "cats,")."""
    core = word.rstrip(".,;:!?")
    return inflect(core) + word[len(core):]


def _match_case(new: str, old: str) -> str:
    return new.capitalize() if old[:1].isupper() and not old[1:2].isupper() else new


def apply_edit(phrase: Phrase, edit: Edit) -> str:
    """The expression with ``edit`` applied (articles fixed, a leading capital kept)."""
    words = [w.text for w in phrase.words]
    replaced = dict(edit.replace)
    before: dict[int, list[tuple[float, str]]] = {}
    for at, rank, text in edit.insert:
        before.setdefault(at, []).append((rank, text))
    out: list[str] = []
    for i in range(len(words) + 1):
        if i in before:
            out += [text for _, text in sorted(before[i], key=lambda e: e[0])]
        if i < len(words):
            text = replaced.get(i, words[i])
            if text:
                out.append(text)
    if words and words[0][:1].isupper() and out and out[0] != words[0]:
        if phrase.words[0].tag not in ("NNP", "NNPS") and words[0] in out:
            out[out.index(words[0])] = words[0][0].lower() + words[0][1:]
        out[0] = out[0][0].upper() + out[0][1:]
    return " ".join(_fix_articles(out))


class EditFinder:
    """Finds the edits that fit an expression by the lexicons ``lex`` (set by the engine that uses it)."""

    lex: Lexicons

    # -- the pieces of an expression --------------------------------------------------------------
    def _modifier_rank(self, phrase: Phrase, i: int) -> float:
        """The adjective-order slot of pre-head word ``i`` (known words by lexicon, others by tag)."""
        lex, w = self.lex, phrase.words[i]
        known = lex.word_rank(w.low)
        if known is not None:
            return known
        if w.text[:1].isupper() and (i > 0 or w.tag in ("NNP", "NNPS")):  # "a Coca-Cola bottle": a name
            return lex.rank("origin")
        if "-" in w.low:  # "red-winged", "long-sleeved", "two-story": a classifier, close to the noun
            return lex.rank("age") + 0.5
        if w.tag == "RB" and i + 1 < len(phrase.words):  # "very small": the adverb goes with its word
            return self._modifier_rank(phrase, i + 1) - 0.1
        if w.tag in ("NNP", "NNPS"):
            return lex.rank("origin")
        if w.tag.startswith("NN") or w.dep == "compound":
            return lex.rank("purpose")
        return lex.rank("state") + 0.5  # unknown adjective or participle: a physical quality

    @staticmethod
    def _names(phrase: Phrase) -> frozenset[int]:
        """Words of proper names ("Big Ben", "the Black Gate Bridge", "a Coca-Cola bottle"): never edited."""
        return frozenset(i for i, w in enumerate(phrase.words)
                         if w.text[:1].isupper() and (i > 0 or w.tag in ("NNP", "NNPS")) and w.low != "i")

    def _is_det(self, phrase: Phrase, i: int) -> bool:
        """A determiner, count or possessive ("the", "two", "his", "the man's")."""
        w = phrase.words[i]
        return (w.low in self.lex.determiners or w.low in self.lex.count_words or w.dep in ("det", "predet", "poss")
                or w.tag in ("CD", "POS", "PRP$") or w.low.endswith("'s") or w.low in self.lex.quantifier_nouns
                or w.low in ("dozen", "dozens", "pair", "couple")
                or (w.low == "of" and i > 0 and phrase.words[i - 1].low in self.lex.quantifier_nouns))

    def _is_object(self, phrase: Phrase, i: int) -> bool:
        """Word ``i`` starts a direct object ("walking her dog", "flying a kite"): the verb before it is no pose."""
        w = phrase.words[i]
        return (w.low in self.lex.determiners or w.low in self.lex.possessives or w.tag in ("DT", "PRP$", "CD", "PRP")
                or (w.tag in ("NN", "NNS", "JJ") and w.low not in self.lex.motion_words))

    def _is_poss(self, phrase: Phrase, i: int) -> bool:
        w = phrase.words[i]
        return w.low in self.lex.possessives or w.dep == "poss" or w.tag == "PRP$" or w.low.endswith("'s")

    def _written(self, allowed: object, category: str, group: int, mass: bool) -> Optional[str]:
        for w in self.lex.categories[category][group]:
            if (allowed == ALL or w in allowed) and not (mass and w in self.lex.not_on_mass) and not (  # type: ignore[operator]
                    allowed == ALL and w in self.lex.explicit_only):
                return w
        return None

    def _swaps(self, phrase: Phrase, indices: range | list[int], kind: str, noun: str, mass: bool,
               key: str = "") -> list[Edit]:
        """Each attribute word at ``indices`` swapped for a word of another group that fits ``kind``."""
        lex, out = self.lex, []
        present = {phrase.words[i].low for i in range(len(phrase.words))}
        names = self._names(phrase)
        for i in indices:
            low = phrase.words[i].low
            if low not in lex.word or lex.word[low][0] not in lex.attribute_categories or lex.word[low][0] == "count":
                continue
            if i in names:
                continue  # "the Black Gate Bridge", "Big Ben"
            cat, g = lex.word[low]
            allowed = ALL if cat == "side" else lex.swappable(kind, cat, noun)
            if allowed is None:
                if kind != UNKNOWN or cat == "pose":
                    continue  # "a black man": a category the kind does not take is left alone
                allowed = ALL  # an unknown noun: the expression shows the category fits ("a robot standing" aside)
            slot = lex.word_rank(low)
            for g2 in range(len(lex.categories[cat])):
                new = self._written(allowed, cat, g2, mass) if g2 != g else None
                if not new or any(w in present for w in lex.categories[cat][g2]):
                    continue
                if lex.conflicts.get(new, frozenset()) & (present - {low}):
                    continue  # "a ripe yellow banana" never becomes "a ripe green banana"
                if not lex.contrasts(low, new):
                    continue  # "a half-eaten sandwich" may be hot: only "a whole sandwich" contradicts it
                if new in lex.rank_overrides and lex.word_rank(new) != slot:
                    continue  # "a yellow dotted square" never becomes "a yellow plain square"
                out.append(Edit(cat + key, True, replace=((i, _match_case(new, phrase.words[i].text)),)))
        return out

    def _inserts(self, phrase: Phrase, mods: list[int], first: int, kind: str, noun: str, mass: bool,
                 has_pose: bool) -> list[Edit]:
        """Attributes the head lacks, each in its adjective-order slot among the modifiers.

        A pose goes only after a head noun that ends the expression ("a man sitting"; never "a
        sitting sheep", nor "the sleeping policemen on horses").
        """
        lex, out = self.lex, []
        if kind == UNKNOWN:
            return []  # "purple fog", "three left hands": nothing is known of what the noun looks like
        words_now = frozenset(w.low for w in phrase.words) | {
            p for w in phrase.words for p in w.low.split("-")}
        names = self._names(phrase)
        marked = lex.marked.get(kind, frozenset())
        # "a cup of coffee" is not empty; "a vase with roses" is not full either (it says what is in it)
        contents = any(w.low in ("of", "with") for w in phrase.words[phrase.head + 1:phrase.head + 2])
        present = {lex.word[part][0] for i in mods for part in {phrase.words[i].low, *phrase.words[i].low.split("-")}
                   if part in lex.word}  # "red-winged" has a colour
        ranks = {i: self._modifier_rank(phrase, i) for i in mods}
        head_last = phrase.head == len(phrase.words) - 1
        for cat in lex.insert_order:
            allowed = lex.insertable(kind, cat, noun)
            if allowed is None or cat in present or (cat == "pose" and (has_pose or not head_last)):
                continue
            for g in range(len(lex.categories[cat])):
                new = self._written(allowed, cat, g, mass)
                if not new or (contents and new in ("empty", "full")) or lex.clashes(new, words_now):
                    continue  # "a hot hot dog", "sandy sand", "dead green grass", "a parked motorcycle parked"
                honest = new in marked  # "a broken chair"; "a gray dog" may be a picture of "a dog"
                if cat == "pose":  # "a man sitting", never "the sleeping policemen on horses"
                    out.append(Edit(cat, False, insert=((len(phrase.words), 0, new),), honest=honest))
                    continue
                rank = lex.word_rank(new)
                at = max([i + 1 for i in mods if ranks[i] <= rank], default=first)
                while at in names and at - 1 in names:
                    at -= 1  # never inside a name: "a pink Coca-Cola bottle"
                out.append(Edit(cat, False, insert=((at, rank, new),), honest=honest))
        return out

    def _agreement(self, phrase: Phrase, to_plural: bool) -> tuple[tuple[int, str], ...]:
        """Verbs whose subject is the head (directly or through "that/which/who") change number."""
        h, words, out = phrase.head, phrase.words, []
        verbs = [v for v, w in enumerate(words) if w.dep in ("relcl",) and w.head == h and
                 any(words[c].low in _RELATIVE and words[c].dep.startswith("nsubj") for c in phrase.children(v))]
        verbs += [v for v, w in enumerate(words) if h in phrase.children(v) and words[h].dep.startswith("nsubj")]
        for v in verbs:
            for x in [v] + [c for c in phrase.children(v) if words[c].dep in ("aux", "auxpass")]:
                w = words[x]
                if to_plural and (w.tag == "VBZ" or w.low == "was"):
                    out.append((x, _inflected(w.text, plural_verb)))
                elif not to_plural and (w.tag == "VBP" or w.low == "were"):
                    out.append((x, _inflected(w.text, singular_verb)))
        return tuple(out)

    def _counts(self, phrase: Phrase, lead: int) -> list[Edit]:
        """Other counts of the head, the head noun (and its verbs) agreeing.

        The head's own determiner or count word is replaced ("the man" -> "two men", "two dogs"
        -> "three dogs" or "a dog"); after a possessive a number is inserted ("his two dogs").
        """
        lex, h, words = self.lex, phrase.head, phrase.words
        leading = list(range(phrase.start, lead))
        poss_at = max((i for i in leading if self._is_poss(phrase, i)), default=None)
        after = [i for i in leading if poss_at is None or i > poss_at]
        def counting(i: int) -> bool:
            return words[i].low in lex.count_words or words[i].tag == "CD" or words[i].low == "dozen"

        if any(not (words[i].low in lex.count_replaces or counting(i)) for i in after):
            return []  # "both children", "all the dogs", "dozens of birds": no count to change
        count_at = next((i for i in after if counting(i)), None)
        det_at = next((i for i in after if words[i].low in lex.count_replaces), None)
        also: tuple[tuple[int, str], ...] = ()
        if count_at is not None and det_at is not None and det_at < count_at:
            also = ((det_at, ""),)  # "a few apples" -> "three apples"
        head = words[h]
        plural = head.tag in PLURAL_TAGS
        sing = _inflected(head.text, lambda w: singular_noun(w, head.lemma)) if plural else head.text
        plur = head.text if plural else _inflected(head.text, plural_noun)
        out = []
        current = lex.word[words[count_at].low][1] if count_at is not None and words[count_at].low in lex.word else None
        vague = len(lex.categories["count"]) - 1  # "several", "many", "few"
        # "dogs", "the dogs", "several apples" may be three of them: only one of them is surely another count
        exact = not plural or (count_at is not None and current != vague and words[count_at].low not in ("dozens",))
        to_plural = ((h, plur),) + self._agreement(phrase, True) if not plural else ()
        for g, group in enumerate(lex.categories["count"]):
            if g == current or not exact or (plural and g == vague):
                continue
            word = group[0]
            at = count_at if count_at is not None else det_at
            if at is not None:
                out.append(Edit("count", True, replace=((at, word),) + also + to_plural))
            elif poss_at is not None:
                if any(w.isdigit() for w in group):  # "his two dogs", never "his several dogs"
                    out.append(Edit("count", False, replace=to_plural, insert=((poss_at + 1, lex.rank("count"), word),)))
            else:
                out.append(Edit("count", False, replace=to_plural, insert=((phrase.start, lex.rank("count"), word),)))
        if plural and sing.lower() != plur.lower():  # "two dogs" -> "a dog", "his dogs" -> "his dog"
            to_sing = ((h, sing),) + self._agreement(phrase, False)
            at = count_at if count_at is not None else det_at
            if at is not None:
                out.append(Edit("count", True, replace=((at, "a"),) + also + to_sing))
            elif poss_at is not None:
                out.append(Edit("count", True, replace=to_sing))
            else:
                out.append(Edit("count", True, replace=to_sing, insert=((phrase.start, _DET_RANK, "a"),)))
        return out

    def _objects(self, phrase: Phrase, start: int, root: int) -> list[Edit]:
        """The object of a relation swapped for another of its group ("holding a balloon" -> "holding a kite")."""
        lex, words = self.lex, phrase.words
        if root in self._names(phrase):
            return []
        other = dataclasses.replace(phrase, head=root, start=start)
        name_start = lex.kind_of(other).name_start
        name = " ".join(w.low for w in words[name_start:root + 1])
        plural = words[root].tag in PLURAL_TAGS
        sing = singular_noun(name, words[root].lemma if name_start == root else None).lower() if plural else name
        if sing not in lex.relation_of and words[root].low in lex.relation_of and name_start != root:
            return []  # "a hot dog" is no dog
        if sing not in lex.relation_of:
            sing, name_start = words[root].lemma if plural else words[root].low, root
            if name_start > start and words[name_start - 1].tag.startswith("NN"):
                return []
        gov = words[start - 1].low if start > 0 else ""
        if gov == "of" and start > 1 and words[start - 2].low == "front":
            gov = "in front of"
        elif gov == "to" and start > 1 and words[start - 2].low == "next":
            gov = "next"
        det = next((words[i].low for i in range(start, name_start) if self._is_det(phrase, i)), "")
        head_kind = lex.kind_of(phrase).kind
        groups = [g for g in lex.relation_of.get(sing, []) if gov in lex.relation_after[g]
                  and (det == "the" or not lex.relation_the_only[g])
                  and (lex.relation_heads[g] is None or head_kind in lex.relation_heads[g])]
        if name_start > start and words[name_start - 1].tag.startswith("NN"):
            return []  # "a black cowboy hat": never "a black cowboy hood"
        present = {w.low for w in words} | {lex.canonical(w.low) for w in words}
        out, seen = [], set()
        for g in groups:
            for new in lex.relation_groups[g]:
                if new == sing or new in seen or lex.canonical(new) in present or new in present or \
                        new.split()[-1] == sing.split()[-1]:  # "a ball" may be a soccer ball
                    continue
                seen.add(new)
                mass_new = new in lex.mass
                if (mass_new and (plural or det in ("a", "an", "one"))) or (sing in lex.mass and not det and not mass_new):
                    continue  # "a sand", "on beach"
                text = plural_noun(new) if plural and not mass_new else new
                text = _match_case(text, words[name_start].text) + words[root].text[len(words[root].text.rstrip(".,;:!?")):]
                rep = ((name_start, text),) + tuple((i, "") for i in range(name_start + 1, root + 1))
                out.append(Edit(f"object@{root}", True, replace=rep))
        return out

    def _relations(self, phrase: Phrase) -> list[Edit]:
        """Actions and spatial relations after the head swapped for contradicting ones.

        "a man riding a horse" -> "a man leading a horse", "a cat on a car" -> "a cat under a car",
        "a man in front of a bus" -> "a man behind a bus", "to the left of" -> "to the right of".
        """
        lex, words, h, out = self.lex, phrase.words, phrase.head, []
        chunks = sorted(c for c in phrase.chunks if c[0] > h)
        for j in range(h + 1, len(words)):
            low = words[j].low
            obj = next((c for c in chunks if c[0] > j), None)
            kind = lex.kind_of(dataclasses.replace(phrase, head=obj[2], start=obj[0])).kind if obj else None
            if low in lex.action_swaps and low.endswith("ing") and obj is not None and obj[0] == j + 1:
                table = lex.action_swaps[low]
                for new in table.get(kind, table.get("*", [])):  # type: ignore[arg-type]
                    out.append(Edit("action", True, replace=((j, new),)))
            elif low == "front" and 0 < j < len(words) - 1 and words[j - 1].low == "in" and words[j + 1].low == "of":
                out.append(Edit("relation", True, replace=((j - 1, "behind"), (j, ""), (j + 1, ""))))
            elif low == "top" and 0 < j < len(words) - 1 and words[j - 1].low == "on" and words[j + 1].low == "of":
                out.append(Edit("relation", True, replace=((j - 1, "under"), (j, ""), (j + 1, ""))))
            elif low in lex.preposition_swaps and words[j].tag in ("IN", "RB", "JJ", "NN", "RP"):
                new = lex.preposition_swaps[low]
                if low in ("on", "atop") and (obj is None or kind not in lex.under_kinds or obj[0] != j + 1
                                              or (j + 1 < len(words) and words[j + 1].low == "top")):
                    continue  # "on the water", "on a horse", "on top of": no "under"
                if low in ("left", "right") and not (j > 0 and words[j - 1].low in ("the", "its", "his", "her", "their")):
                    continue
                out.append(Edit("relation", True, replace=((j, _match_case(new, words[j].text)),)))
        return out

    @staticmethod
    def _noun(phrase: Phrase) -> str:
        """The head noun, singular, lower case ("horses" -> "horse")."""
        head = phrase.words[phrase.head]
        return (singular_noun(head.low, head.lemma) if head.tag in PLURAL_TAGS else head.low).lower()

    def edits(self, phrase: Phrase) -> list[Edit]:
        """Every single edit that fits the expression."""
        lex, h, words = self.lex, phrase.head, phrase.words
        kind = lex.kind_of(phrase)
        mass = lex.is_mass(phrase)
        named = h in self._names(phrase)  # "Big Ben", "the Great Wall of China": the name is the object
        lead = phrase.start
        while lead < kind.name_start and self._is_det(phrase, lead):
            lead += 1
        mods = [i for i in range(lead, kind.name_start) if not self._is_det(phrase, i)]
        after = [j for j in range(h + 1, len(words)) if words[j].low in lex.pose_words and
                 (j == h + 1 or words[j].head == h or words[words[j].head].head == h)]
        has_pose = bool(after) or any(words[c].dep in ("acl", "relcl") for c in phrase.children(h))
        moving = [j for j in after if j + 1 < len(words) and words[j + 1].low in lex.motion_words]
        after = [j for j in after if not (j + 1 < len(words) and self._is_object(phrase, j + 1))]
        noun = self._noun(phrase)
        out = self._swaps(phrase, mods, kind.kind, noun, mass)
        out += [e for e in self._swaps(phrase, after, kind.kind, noun, mass)
                if not any(i in moving and text not in lex.moving_poses for i, text in e.replace)]
        if not named:
            out += self._inserts(phrase, mods, lead, kind.kind, noun, mass, has_pose)
            if not mass and lex.allowed(kind.kind, "count") is not None:
                out += self._counts(phrase, lead)
        out += self._relations(phrase)
        for start, _end, root in phrase.chunks:  # attributes of the other nouns: "a man in a blue shirt"
            if root <= h or root < 0:
                continue
            other = dataclasses.replace(phrase, head=root, start=start)
            other_kind = lex.kind_of(other)
            span = [i for i in range(start, other_kind.name_start) if not self._is_det(other, i)]
            out += self._swaps(other, span, other_kind.kind, self._noun(other), lex.is_mass(other), key=f"@{root}")
            out += self._objects(phrase, start, root)
        return out
