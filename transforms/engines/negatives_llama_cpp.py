"""LlamaCppNegatives: in-process llama-cpp-python on a local GGUF, output forced by a GBNF grammar.

The grammar (``prompts/negatives.gbnf``) only admits a JSON list of exactly 10 short strings with
no raw newlines, so every answer parses; validation still judges what the model wrote.
Spec: ``llama-cpp:/path/model.gguf[?n_ctx=2048&n_threads=4&temperature=0.8&max_tokens=1024]``.
"""
from __future__ import annotations

import os
from typing import Any, Optional

from core.engines import EngineSpec, NegativesEngine
from transforms.common import SampleError
from transforms.engines import engine_options
from transforms.negatives_prompt import load_negatives_prompt, request_seed


class LlamaCppNegatives(NegativesEngine):
    def __init__(self, spec: EngineSpec, llama: Optional[Any] = None, **options: Any):
        path, opts = engine_options(spec.target, options)
        self.prompt = load_negatives_prompt()
        self.temperature = float(opts.get("temperature", 0.8))
        self.top_p = float(opts.get("top_p", 0.95))
        self.max_tokens = int(opts.get("max_tokens", 1024))
        import llama_cpp  # lazy: only where this engine runs

        if llama is None:
            if not os.path.isfile(path):
                raise FileNotFoundError(f"llama-cpp engine: no GGUF file at {path!r}")
            llama = llama_cpp.Llama(model_path=path, n_ctx=int(opts.get("n_ctx", 2048)),
                                    n_threads=int(opts.get("n_threads", max(1, min(4, os.cpu_count() or 1)))),
                                    n_batch=int(opts.get("n_batch", 512)), seed=0, verbose=False)
        self.llm = llama
        self.grammar = llama_cpp.LlamaGrammar.from_string(self.prompt.grammar, verbose=False)
        self.provenance = {"engine": "llama-cpp", "model": os.path.basename(path),
                           "model_bytes": os.path.getsize(path) if os.path.isfile(path) else None,
                           "llama_cpp_version": getattr(llama_cpp, "__version__", ""), "stub": False,
                           **self.prompt.provenance()}

    def _one(self, expression: str, seed: int) -> str:
        answer = self.llm.create_chat_completion(
            messages=self.prompt.messages(expression), grammar=self.grammar, temperature=self.temperature,
            top_p=self.top_p, max_tokens=self.max_tokens, seed=request_seed(expression, seed))
        choice = answer["choices"][0]
        if choice.get("finish_reason") == "length":
            raise SampleError("truncated", f"answer hit max_tokens={self.max_tokens}")
        return choice["message"]["content"] or ""

    def generate(self, expressions: list[str], seed: int = 0) -> list[str | Exception]:
        """One grammar-constrained completion per expression (llama.cpp runs one sequence at a time)."""
        out: list[str | Exception] = []
        for expression in expressions:
            try:
                out.append(self._one(expression, seed))
            except SampleError as e:
                out.append(e)
            except Exception as e:  # noqa: BLE001 - one bad generation must not lose the others
                out.append(SampleError("engine_error", f"{type(e).__name__}: {e}"))
        return out


def build(spec: EngineSpec, **options: Any) -> LlamaCppNegatives:
    return LlamaCppNegatives(spec, **options)
