"""StubNegatives: ten colour swaps of the expression (keeps the noun)."""
from __future__ import annotations

from typing import Any

from core.engines import EngineSpec, NegativesEngine, stub_provenance

_COLOURS = ("red", "green", "blue", "yellow", "orange", "purple", "pink", "brown", "black",
            "gray", "white", "silver")


class StubNegatives(NegativesEngine):
    def __init__(self, spec: EngineSpec, **_: Any):
        self.provenance = stub_provenance("negatives-colour-swap")

    def generate(self, expressions: list[str], seed: int = 0) -> list[list[str]]:
        return [self._one(e) for e in expressions]

    @staticmethod
    def _one(expression: str) -> list[str]:
        words = expression.split()
        at = next((i for i, w in enumerate(words) if w.lower() in _COLOURS), None)
        present = words[at].lower() if at is not None else None
        out = []
        for colour in _COLOURS:
            if colour == present:
                continue
            if at is None:  # no colour to change: insert one after the determiner
                pos = 1 if len(words) > 1 and words[0].lower() in ("a", "an", "the") else 0
                cand = words[:pos] + [colour] + words[pos:]
            else:
                cand = words[:at] + [colour] + words[at + 1:]
            out.append(" ".join(cand))
        return out[:10]


def build(spec: EngineSpec, **options: Any) -> StubNegatives:
    return StubNegatives(spec, **options)
