"""The Beam ModelHandlers of the model stages (importing Beam's RunInference pulls in torch: seconds).

Kept apart from ``transforms.common``, and the stage logic they run lives in ``stages/``, so that
what needs only the stage logic (the ``finehard expressions`` / ``negatives`` stage commands) never
imports Beam.
"""
from __future__ import annotations

import logging
from typing import Any, Callable, Iterable, Optional, Sequence

from apache_beam.ml.inference.base import ModelHandler

from core.engines import EngineRegistry, EngineSpec
from core.record import Field, METRICS_NAMESPACE
from core.outcomes import bump, mark_dead
from stages.expressions import (SPACY_MODEL, STAGE as EXPRESSIONS_STAGE, expressions_from_doc,
    expressions_provenance, load_nlp)

LOG = logging.getLogger("transforms.common")  # the name these lines always had

# Engines that batch on the device themselves take larger batches than ``--batch-size`` by default:
# vLLM's offline ``generate`` schedules hundreds of prompts at once (its ``max_num_seqs`` is 256).
ENGINE_MIN_BATCH = {"vllm": 256}


def engine_batch_size(spec: EngineSpec, batch_size: int) -> int:
    """The batch an in-process engine gets: ``batch_size``, or more for engines that want more."""
    return max(batch_size, ENGINE_MIN_BATCH.get(spec.kind, 0))


class EngineModelHandler(ModelHandler[dict, dict, Any]):
    """A Beam ModelHandler over one engine from a stage's registry.

    ``load_model`` builds the engine named by the spec (one per worker process, or one per
    machine for GPU engines that set ``share_model_across_processes``); ``run_inference`` hands
    the batch of records to ``apply(engine, records)``, which must return the records with
    their new fields set or marked dead, one output per input.
    """

    def __init__(self, registry: EngineRegistry, spec: EngineSpec,
                 apply: Callable[[Any, list[dict]], list[dict]],
                 batch_size: int = 8, engine_options: Optional[dict[str, Any]] = None):
        super().__init__()
        self._registry = registry
        self._spec = spec
        self._apply = apply
        self._batch_size = engine_batch_size(spec, batch_size)
        self._engine_options = dict(engine_options or {})
        self._gpu = registry.entry(spec).gpu

    def load_model(self) -> Any:
        LOG.info("loading %s engine %s", self._registry.stage, self._spec.raw)
        return self._registry.build(self._spec, **self._engine_options)

    def run_inference(self, batch: Sequence[dict], model: Any,
                      inference_args: Optional[dict[str, Any]] = None) -> Iterable[dict]:
        records = list(batch)
        out = self._apply(model, records)
        if len(out) != len(records):
            raise RuntimeError(f"{self._registry.stage} returned {len(out)} results for {len(records)} inputs")
        return out

    def get_num_bytes(self, batch: Sequence[dict]) -> int:
        return sum(len(r.get(Field.IMAGE_BYTES, b"")) + len(r.get("caption", "")) for r in batch)  # spilled: 0

    def get_metrics_namespace(self) -> str:
        return f"{METRICS_NAMESPACE}_{self._registry.stage}"

    def batch_elements_kwargs(self) -> dict[str, Any]:
        # Full batches from the first one: Beam's default starts at 1 and doubles, which leaves a device
        # half empty for the first batches of every bundle. A bundle's last batch may be smaller.
        return {"min_batch_size": self._batch_size, "max_batch_size": self._batch_size}

    def share_model_across_processes(self) -> bool:
        return self._gpu


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
        live = [r for r in records if Field.DEAD not in r and Field.FILTERED not in r]
        provenance = expressions_provenance(model, self._model_name)
        try:
            docs = list(model.pipe([r.get("caption", "") for r in live], batch_size=self._batch_size))
        except Exception:  # noqa: BLE001 - a failing batch falls back to one caption at a time
            docs = []
            for rec in live:
                try:
                    docs.append(model(rec.get("caption", "")))
                except Exception as e:  # noqa: BLE001
                    docs.append(e)
        for rec, doc in zip(live, docs):
            try:
                if isinstance(doc, Exception):
                    raise doc
                rec[Field.EXPRESSIONS] = expressions_from_doc(doc)
                rec.setdefault("provenance", {})["expressions"] = provenance
                bump(rec, "expressions", len(rec[Field.EXPRESSIONS]))
            except Exception as e:  # noqa: BLE001
                mark_dead(rec, EXPRESSIONS_STAGE, "error", f"{type(e).__name__}: {e}")
        return records

    def get_num_bytes(self, batch: Sequence[dict]) -> int:
        return sum(len(r.get("caption", "")) for r in batch)

    def get_metrics_namespace(self) -> str:
        return f"{METRICS_NAMESPACE}_{EXPRESSIONS_STAGE}"

    def batch_elements_kwargs(self) -> dict[str, Any]:
        return {"min_batch_size": self._batch_size, "max_batch_size": self._batch_size}
