"""Text helpers the text stages share (hard negatives, their validation and every negatives engine).

Ground rules: nothing here imports a stage module at import time; spaCy and the inflection library
load lazily, once per process.
"""
from __future__ import annotations

import re

_ARTICLE = re.compile(r"^(?:a|an|the)\s+")


def norm(text: str) -> str:
    """Comparison form: lower case, single spaces, hyphens as spaces, no leading article."""
    return _ARTICLE.sub("", " ".join(text.lower().replace("-", " ").split()))
