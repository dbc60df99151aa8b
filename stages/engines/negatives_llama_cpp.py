"""LlamaCppNegatives: llama.cpp's own C++ server, in-process, on a local GGUF; output forced by a GBNF grammar.

llama.cpp comes as a prebuilt wheel (``xllamacpp``, the ``llama`` extra: no compiler, no build).
The engine loads the model into llama.cpp's server (:func:`start_server`) and sends it
OpenAI-style chat requests with the grammar (``prompts/negatives.gbnf``) in the ``grammar``
field. The grammar only admits a JSON list of exactly 10 short strings with no raw newlines, so
every answer parses; validation still judges what the model wrote.

The same server also answers HTTP on 127.0.0.1 (a free port, :attr:`LlamaServer.base_url`):
``openai:`` engines can talk to it like to any OpenAI-compatible server; nothing listens beyond
the loopback address.

Spec: ``llama-cpp:/path/model.gguf[?n_ctx=2048&n_threads=4&n_batch=512&temperature=0.8&top_p=0.95&max_tokens=1024]``.
"""
from __future__ import annotations

import os
from typing import Any, Optional

from core.engines import EngineSpec, NegativesEngine
from core.record import SampleError
from stages.engines import engine_options
from stages.negatives_prompt import load_negatives_prompt, request_seed

INSTALL_HINT = "the llama-cpp engine needs llama.cpp's prebuilt wheel: pip install -e '.[llama]' (from the checkout)"


def _xllamacpp() -> Any:
    try:
        import xllamacpp  # lazy: only where this engine runs
    except ImportError as e:
        raise ImportError(f"{INSTALL_HINT} ({e})") from e
    return xllamacpp


def llama_cpp_version() -> str:
    """Which llama.cpp build runs: the wheel's name and version (e.g. ``xllamacpp 2026.10.11549``)."""
    return f"xllamacpp {_xllamacpp().__version__}"


class LlamaServer:
    """llama.cpp's server on one GGUF, in this process: ``chat(body)`` and, over HTTP, ``base_url``."""

    def __init__(self, model_path: str, n_ctx: int = 2048, n_threads: Optional[int] = None, n_batch: int = 512):
        if not os.path.isfile(model_path):
            raise FileNotFoundError(f"llama-cpp engine: no GGUF file at {model_path!r}")
        xlc = _xllamacpp()
        threads = int(n_threads or max(1, min(4, os.cpu_count() or 1)))
        params = xlc.CommonParams()
        params.model.path = model_path
        params.n_ctx = int(n_ctx)
        params.n_batch = int(n_batch)
        params.n_ubatch = min(int(n_batch), params.n_ubatch)
        params.n_parallel = 1  # one sequence at a time: the same request gives the same answer
        params.cpuparams.n_threads = threads
        params.cpuparams_batch.n_threads = threads
        params.n_gpu_layers = 0  # the CPU build; an accelerator is the vllm:/openai: engines' business
        params.hostnames = ["127.0.0.1"]
        params.port = 0  # a free port, chosen by the server
        params.offline = True  # never a hub download
        params.ui = False
        params.verbosity = -1  # no per-request log lines on stderr
        self.model_path = model_path
        self._server = xlc.Server(params)
        self.base_url = f"{self._server.listening_address.rstrip('/')}/v1"

    def chat(self, body: dict[str, Any]) -> dict[str, Any]:
        """One OpenAI-style chat completion; an error answer raises :class:`RuntimeError` with its message."""
        if self._server is None:
            raise RuntimeError("llama.cpp server is closed")
        answer = self._server.handle_chat_completions(body)
        if isinstance(answer, dict) and "error" in answer:
            error = answer["error"]
            raise RuntimeError(error.get("message", str(error)) if isinstance(error, dict) else str(error))
        return answer

    def close(self) -> None:
        """Stop the server and free the model (also done when the object is collected)."""
        self._server = None


def start_server(model_path: str, **options: Any) -> LlamaServer:
    """A :class:`LlamaServer`; ``options``: ``n_ctx``, ``n_threads``, ``n_batch``."""
    return LlamaServer(model_path, **options)


class LlamaCppNegatives(NegativesEngine):
    def __init__(self, spec: EngineSpec, server: Optional[LlamaServer] = None, **options: Any):
        path, opts = engine_options(spec.target, options)
        self.prompt = load_negatives_prompt()
        self.temperature = float(opts.get("temperature", 0.8))
        self.top_p = float(opts.get("top_p", 0.95))
        self.max_tokens = int(opts.get("max_tokens", 1024))
        if server is None:
            server = start_server(path, n_ctx=int(opts.get("n_ctx", 2048)), n_threads=opts.get("n_threads"),
                                  n_batch=int(opts.get("n_batch", 512)))
        self.server = server
        self._check_grammar()
        self.provenance = {"engine": "llama-cpp", "model": os.path.basename(path),
                           "model_bytes": os.path.getsize(path) if os.path.isfile(path) else None,
                           "llama_cpp_version": llama_cpp_version(), "stub": False,
                           **self.prompt.provenance()}

    def _check_grammar(self) -> None:
        """Fail at start, not on every sample, when llama.cpp cannot parse the grammar (one token asked)."""
        try:
            self.server.chat({"messages": self.prompt.messages("a red car"), "grammar": self.prompt.grammar,
                              "max_tokens": 1, "seed": 0})
        except RuntimeError as e:
            raise ValueError(f"llama-cpp engine: llama.cpp rejects prompts/negatives.gbnf: {e}") from e

    def _one(self, expression: str, seed: int) -> str:
        answer = self.server.chat({"messages": self.prompt.messages(expression), "grammar": self.prompt.grammar,
                                   "temperature": self.temperature, "top_p": self.top_p,
                                   "max_tokens": self.max_tokens, "seed": request_seed(expression, seed)})
        choice = answer["choices"][0]
        if choice.get("finish_reason") == "length":
            raise SampleError("truncated", f"answer hit max_tokens={self.max_tokens}")
        return choice["message"]["content"] or ""

    def generate(self, expressions: list[str], seed: int = 0) -> list[str | Exception]:
        """One grammar-constrained completion per expression (one sequence at a time)."""
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
