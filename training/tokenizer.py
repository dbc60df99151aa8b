"""Text tokenizers: a real CLIP tokenizer from a local path, or an offline word-level stand-in for tests.

``SimpleWordTokenizer`` is used only when no tokenizer path is given and the model folder has none.
It lower-cases, splits words and punctuation, and maps each piece to a stable id by CRC32 hash.
Output layout follows CLIP: ``[BOS] tokens... [EOS] [PAD]...`` with right padding, so the pooled
text feature is read at the last attended position (the EOS) for both tokenizers.
"""
from __future__ import annotations

import json
import logging
import os
import re
import zlib
from typing import Any, Sequence

import torch

log = logging.getLogger(__name__)

SIMPLE_TOKENIZER_FILE = "simple_word_tokenizer.json"
_WORD = re.compile(r"[a-z0-9]+|[^\sa-z0-9]")


class SimpleWordTokenizer:
    """Deterministic offline word-level tokenizer with the HF ``__call__`` interface used in training."""

    def __init__(self, vocab_size: int = 4096) -> None:
        if vocab_size < 16:
            raise ValueError("vocab_size must be at least 16")
        self.vocab_size = vocab_size
        self.pad_token_id = 0
        self.bos_token_id = vocab_size - 2
        self.eos_token_id = vocab_size - 1

    def encode(self, text: str) -> list[int]:
        """Ids of ``text`` without special tokens."""
        return [1 + zlib.crc32(w.encode("utf-8")) % (self.vocab_size - 3) for w in _WORD.findall(text.lower())]

    def __call__(self, texts: str | Sequence[str], padding: bool | str = True, truncation: bool = True,
                 max_length: int = 77, return_tensors: str = "pt") -> dict[str, torch.Tensor]:
        if isinstance(texts, str):
            texts = [texts]
        rows = []
        for t in texts:
            ids = self.encode(t)
            if truncation:
                ids = ids[: max_length - 2]
            rows.append([self.bos_token_id] + ids + [self.eos_token_id])
        width = max_length if padding == "max_length" else max(len(r) for r in rows)
        input_ids = torch.full((len(rows), width), self.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, r in enumerate(rows):
            input_ids[i, : len(r)] = torch.tensor(r)
            mask[i, : len(r)] = 1
        return {"input_ids": input_ids, "attention_mask": mask}

    def save_pretrained(self, path: str) -> None:
        """Write the tokenizer's settings so :func:`load_tokenizer` can rebuild it."""
        os.makedirs(path, exist_ok=True)
        with open(os.path.join(path, SIMPLE_TOKENIZER_FILE), "w", encoding="utf-8") as f:
            json.dump({"type": "SimpleWordTokenizer", "vocab_size": self.vocab_size}, f)


def _has_hf_tokenizer(path: str) -> bool:
    names = ("tokenizer.json", "vocab.json", "tokenizer_config.json")
    return os.path.isdir(path) and any(os.path.isfile(os.path.join(path, n)) for n in names)


def load_tokenizer(path: str | None, model_dir: str | None = None, vocab_size: int = 4096) -> Any:
    """A tokenizer from ``path``, else from ``model_dir``, else the offline SimpleWordTokenizer."""
    for candidate in (path, model_dir):
        if not candidate:
            continue
        simple = os.path.join(candidate, SIMPLE_TOKENIZER_FILE)
        if os.path.isfile(simple):
            with open(simple, encoding="utf-8") as f:
                return SimpleWordTokenizer(int(json.load(f)["vocab_size"]))
        if _has_hf_tokenizer(candidate):
            from transformers import AutoTokenizer

            return AutoTokenizer.from_pretrained(candidate, local_files_only=True)
        if candidate is path:
            raise FileNotFoundError(f"no tokenizer files in {path!r}; pass a folder with tokenizer.json or vocab.json+merges.txt")
    log.warning("no tokenizer given: using the offline SimpleWordTokenizer (vocab %d); pass --tokenizer PATH for real runs", vocab_size)
    return SimpleWordTokenizer(vocab_size)


def tokenize(tokenizer: Any, texts: Sequence[str], max_length: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(input_ids, attention_mask)`` padded to the longest text, truncated to ``max_length``."""
    out = tokenizer(list(texts), padding=True, truncation=True, max_length=max_length, return_tensors="pt")
    return out["input_ids"], out["attention_mask"]
