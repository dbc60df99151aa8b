"""What every negatives engine asks with: the prompt, its output schema and grammar, and request seeds.

Shared by the negatives stage (``stages.negatives``) and the LLM engines under
``stages/engines/``, so an engine never imports its stage module.
"""
from __future__ import annotations

import functools
import hashlib
import json
from dataclasses import dataclass
from typing import Any

from prompts import load_prompt
from stages.text import head_noun

PROMPT_FILE = "negatives.txt"
SCHEMA_FILE = "negatives.schema.json"
GRAMMAR_FILE = "negatives.gbnf"


@dataclass(frozen=True)
class NegativesPrompt:
    """The prompt template, the output schema and grammar, and their hashes for provenance."""

    template: str
    schema: dict[str, Any]
    grammar: str
    prompt_sha: str
    schema_sha: str
    grammar_sha: str

    def messages(self, expression: str) -> list[dict[str, str]]:
        text = self.template.replace("{expression}", expression).replace("{head}", head_noun(expression))
        return [{"role": "user", "content": text}]

    def provenance(self) -> dict[str, str]:
        return {"prompt": PROMPT_FILE, "prompt_sha": self.prompt_sha, "schema_sha": self.schema_sha,
                "grammar_sha": self.grammar_sha}


@functools.lru_cache(maxsize=None)
def load_negatives_prompt() -> NegativesPrompt:
    template, prompt_sha = load_prompt(PROMPT_FILE)
    schema_text, schema_sha = load_prompt(SCHEMA_FILE)
    grammar, grammar_sha = load_prompt(GRAMMAR_FILE)
    return NegativesPrompt(template, json.loads(schema_text), grammar, prompt_sha, schema_sha, grammar_sha)


def request_seed(expression: str, attempt: int) -> int:
    """A sampling seed fixed by the expression and the attempt, whatever batch it lands in."""
    return int(hashlib.sha1(f"{attempt}:{expression}".encode("utf-8")).hexdigest()[:8], 16) & 0x7FFFFFFF
