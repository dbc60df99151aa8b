"""VllmNegatives: in-process ``vllm.LLM``, one batched ``chat`` call per batch, JSON-schema decoding.

vLLM cannot live in the Beam worker's environment here (pins conflict), so this engine serves
where a vLLM release fits the worker's pins; otherwise run ``vllm serve`` in its own environment
and use ``openai:http://host:8000/v1#MODEL``. Spec: ``vllm:/models/llama[?tensor_parallel_size=2&
gpu_memory_utilization=0.85&max_model_len=4096&load_format=dummy]``. ``vllm`` is imported lazily.
"""
from __future__ import annotations

from typing import Any, Optional

from core.engines import EngineSpec, NegativesEngine
from core.record import SampleError
from stages.engines import engine_options
from stages.negatives_prompt import load_negatives_prompt, request_seed

LLM_OPTION_KEYS = ("tensor_parallel_size", "gpu_memory_utilization", "max_model_len", "load_format", "dtype",
                   "enforce_eager", "trust_remote_code")


def structured_kwargs(vllm: Any, schema: dict[str, Any]) -> dict[str, Any]:
    """SamplingParams keyword for JSON-schema decoding, in this vLLM's own API.

    vLLM >= 0.10.2 has ``StructuredOutputsParams`` (``structured_outputs=``); older releases have
    ``GuidedDecodingParams`` (``guided_decoding=``), removed in 0.12.
    """
    sp = vllm.sampling_params
    if hasattr(sp, "StructuredOutputsParams"):
        return {"structured_outputs": sp.StructuredOutputsParams(json=schema)}
    if hasattr(sp, "GuidedDecodingParams"):
        return {"guided_decoding": sp.GuidedDecodingParams(json=schema)}
    raise RuntimeError("this vLLM has neither StructuredOutputsParams nor GuidedDecodingParams")


class VllmNegatives(NegativesEngine):
    def __init__(self, spec: EngineSpec, llm: Optional[Any] = None, **options: Any):
        import vllm  # lazy: only on a machine that has it
        import vllm.sampling_params  # noqa: F401

        path, opts = engine_options(spec.target, options)
        self.vllm = vllm
        self.prompt = load_negatives_prompt()
        self.temperature = float(opts.get("temperature", 0.8))
        self.top_p = float(opts.get("top_p", 0.95))
        self.max_tokens = int(opts.get("max_tokens", 512))
        self.llm_kwargs = {k: opts[k] for k in LLM_OPTION_KEYS if k in opts}
        self.llm = llm if llm is not None else vllm.LLM(model=path, **self.llm_kwargs)
        self.provenance = {"engine": "vllm", "model": spec.model or path, "vllm_version": getattr(vllm, "__version__", ""),
                           "load_format": self.llm_kwargs.get("load_format", "auto"), "stub": False,
                           **self.prompt.provenance()}

    def sampling_params(self, expression: str, seed: int) -> Any:
        return self.vllm.SamplingParams(temperature=self.temperature, top_p=self.top_p, max_tokens=self.max_tokens,
                                        seed=request_seed(expression, seed),
                                        **structured_kwargs(self.vllm, self.prompt.schema))

    def generate(self, expressions: list[str], seed: int = 0) -> list[str | Exception]:
        """All expressions in one ``LLM.chat`` call (vLLM batches them on the GPU)."""
        conversations = [self.prompt.messages(e) for e in expressions]
        params = [self.sampling_params(e, seed) for e in expressions]
        outputs = self.llm.chat(conversations, sampling_params=params, use_tqdm=False)
        answers: list[str | Exception] = []
        for out in outputs:
            completion = out.outputs[0]
            if getattr(completion, "finish_reason", None) == "length":
                answers.append(SampleError("truncated", f"answer hit max_tokens={self.max_tokens}"))
            else:
                answers.append(completion.text)
        return answers


def build(spec: EngineSpec, **options: Any) -> VllmNegatives:
    return VllmNegatives(spec, **options)
