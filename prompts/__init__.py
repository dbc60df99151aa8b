"""Prompt templates, output schemas, grammars and word lists, as data files loaded by name."""
from __future__ import annotations

import functools
import hashlib
import pathlib

PROMPTS_DIR = pathlib.Path(__file__).resolve().parent


@functools.lru_cache(maxsize=None)
def load_prompt(name: str) -> tuple[str, str]:
    """``(text, sha)`` of the data file ``prompts/<name>``; sha is a short sha256 for provenance."""
    path = (PROMPTS_DIR / name).resolve()
    if path.parent != PROMPTS_DIR or not path.is_file():
        raise FileNotFoundError(f"no prompt file {name!r} in {PROMPTS_DIR}")
    text = path.read_text(encoding="utf-8")
    return text, hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def load_word_list(name: str) -> frozenset[str]:
    """Lower-cased words of a one-word-per-line file; '#' starts a comment."""
    text, _ = load_prompt(name)
    words = (line.split("#", 1)[0].strip().lower() for line in text.splitlines())
    return frozenset(w for w in words if w)
