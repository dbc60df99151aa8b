"""ExtractExpressions: GRIT-style referring expressions from the long caption, one spaCy pipeline per worker
(what an expression is and how it is found: ``stages.expressions``)."""
from __future__ import annotations

import apache_beam as beam
from apache_beam.ml.inference.base import RunInference

from stages.expressions import SPACY_MODEL
from transforms.inference import SpacyExpressionHandler


class ExtractExpressions(beam.PTransform):
    def __init__(self, model_name: str = SPACY_MODEL, batch_size: int = 64):
        super().__init__()
        self.model_name, self.batch_size = model_name, batch_size

    def expand(self, records: beam.PCollection) -> beam.PCollection:
        return records | "Parse" >> RunInference(SpacyExpressionHandler(self.model_name, self.batch_size))
