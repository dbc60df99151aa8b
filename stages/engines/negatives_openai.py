"""OpenAINegatives: any OpenAI-compatible chat server (vLLM serve, llama.cpp server, LMDeploy ...).

Spec: ``openai:BASE_URL[?structured=MODE&concurrency=N&timeout=120&retries=2]#MODEL`` (no ``concurrency``,
or ``auto``: the request window adapts it to the server).
Structured output differs per server, so MODE picks the request shape:

- ``json_schema``: ``response_format: {type: json_schema, json_schema: {name, schema}}`` (vLLM, OpenAI)
- ``grammar``: the GBNF grammar as a top-level ``grammar`` field (llama.cpp servers)
- ``json_object``: ``response_format: {type: json_object, schema}`` (llama-cpp-python's server)
- ``none``: plain chat; the answer is parsed and validated all the same
- ``auto`` (default): try them in that order; a 400/422 answer
  (or llama-cpp-python's 500 carrying a request validation error: the server rejects the field)
  moves on to the next one, and the first that is accepted is kept for the engine's life.
"""
from __future__ import annotations

import threading
from typing import Any, Optional

from core.engines import EngineSpec, NegativesEngine
from core.record import SampleError
from stages.engines import engine_options
from stages.engines.openai_client import OpenAIClient, OpenAIError, OpenAITimeout, default_warmup_s, optional_int
from stages.negatives_prompt import load_negatives_prompt, request_seed

MODES = ("json_schema", "grammar", "json_object", "none")
REJECTED_STATUS = (400, 422)


def rejects_request_shape(error: OpenAIError, mode: str) -> bool:
    """Whether the server refused the structured-output fields of ``mode`` (not a passing failure).

    vLLM and most servers answer 400/422; llama-cpp-python's server answers 500 with the request
    validation error (``literal_error`` on ``response_format.type``) in the body.
    """
    if mode == "none" or error.status is None:
        return False
    if error.status in REJECTED_STATUS:
        return True
    body = error.body.lower()
    return error.status == 500 and ("validation error" in body or "literal_error" in body) and (
        "response_format" in body or "grammar" in body)


class OpenAINegatives(NegativesEngine):
    def __init__(self, spec: EngineSpec, client: Optional[OpenAIClient] = None, **options: Any):
        base_url, opts = engine_options(spec.target, options)
        self.prompt = load_negatives_prompt()
        self.client = client or OpenAIClient(base_url, model=spec.model, timeout=float(opts.get("timeout", 120)),
                                             retries=int(opts.get("retries", 2)),
                                             concurrency=optional_int(opts.get("concurrency")))
        structured = str(opts.get("structured", "auto"))
        if structured != "auto" and structured not in MODES:
            raise ValueError(f"openai negatives: structured={structured!r}; choose auto or one of {MODES}")
        self._modes = list(MODES) if structured == "auto" else [structured]
        self._lock = threading.Lock()
        self.temperature = float(opts.get("temperature", 0.8))
        self.max_tokens = int(opts.get("max_tokens", 512))
        self.provenance = {"engine": "openai", "model": spec.model or "(server default)",
                           "endpoint_host": self.client.base_url.split("/")[2], "stub": False,
                           **self.prompt.provenance()}
        if client is None:  # a GPU container's server may still be loading: wait before the first batch
            self.client.wait_ready(float(opts.get("warmup", default_warmup_s())))

    @property
    def mode(self) -> str:
        """The structured-output request shape in use now."""
        return self._modes[0]

    def structured_extras(self, mode: str) -> dict[str, Any]:
        """The request fields that ask the server for output in our schema, for ``mode``."""
        if mode == "json_schema":
            return {"response_format": {"type": "json_schema", "json_schema": {
                "name": "hard_negatives", "schema": self.prompt.schema}}}
        if mode == "grammar":
            return {"grammar": self.prompt.grammar}
        if mode == "json_object":
            return {"response_format": {"type": "json_object", "schema": self.prompt.schema}}
        return {}

    def _one(self, expression: str, seed: int) -> str | Exception:
        while True:
            mode = self.mode
            extras = {"temperature": self.temperature, "max_tokens": self.max_tokens,
                      "seed": request_seed(expression, seed), **self.structured_extras(mode)}
            try:
                return self.client.chat(self.prompt.messages(expression), **extras)
            except OpenAITimeout as e:
                return SampleError("timeout", str(e))
            except OpenAIError as e:
                if rejects_request_shape(e, mode):
                    with self._lock:  # the server rejects this request shape: try the next one
                        if self._modes[0] == mode and len(self._modes) > 1:
                            self._modes.pop(0)
                            continue
                        if self._modes[0] != mode:
                            continue  # another thread moved on already
                return SampleError("engine_error", str(e))

    def call(self, request: tuple[str, int]) -> str | Exception:
        """One ``(expression, seed)`` request (I/O only: the request window's threads run this)."""
        return self._one(*request)

    def generate(self, expressions: list[str], seed: int = 0) -> list[str | Exception]:
        """Raw answers (or per-expression errors), ``concurrency`` requests in flight."""
        return self.client.map(lambda e: self._one(e, seed), expressions)


def build(spec: EngineSpec, **options: Any) -> OpenAINegatives:
    return OpenAINegatives(spec, **options)
