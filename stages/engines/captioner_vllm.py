"""Recaption with an in-process ``vllm.LLM``: ``vllm:/models/Qwen2-VL-7B-Instruct``."""
from __future__ import annotations

from typing import Any, Optional, Sequence

from PIL import Image

from core.engines import EngineSpec
from stages.engines.captioner_base import (CaptionerBase, caption_messages, image_data_uri, per_item_fallback,
    resolve_options)

VLLM_LLM_KEYS = ("tensor_parallel_size", "gpu_memory_utilization", "max_model_len", "load_format", "dtype",
                 "enforce_eager", "trust_remote_code", "max_num_seqs", "seed")


class VllmCaptioner(CaptionerBase):
    """In-process ``vllm.LLM`` (Qwen2-VL, InternVL, ...): one batched ``LLM.chat`` call per batch."""

    engine = "vllm"

    def __init__(self, spec: EngineSpec, llm: Optional[Any] = None, **options: Any):
        import vllm  # lazy: only where vLLM is installed

        path, opts = resolve_options(spec, options)
        super().__init__(spec.model or path, opts)
        self.vllm = vllm
        self.llm_kwargs = {k: opts[k] for k in VLLM_LLM_KEYS if k in opts}
        self.llm_kwargs["limit_mm_per_prompt"] = {"image": 1}
        self.llm = llm if llm is not None else vllm.LLM(model=path, **self.llm_kwargs)
        self.sampling = vllm.SamplingParams(temperature=self.temperature, max_tokens=self.max_tokens,
                                            **({"seed": int(opts["seed"])} if "seed" in opts else {}))
        self.provenance["vllm_version"] = getattr(vllm, "__version__", "")

    def conversations(self, images: Sequence[Image.Image]) -> list[list[dict[str, Any]]]:
        return [caption_messages(self.prompt, image_data_uri(self.prepare(im), self.jpeg_quality)) for im in images]

    def _batch(self, conversations: list[list[dict[str, Any]]]) -> list[str | Exception]:
        outputs = self.llm.chat(conversations, sampling_params=self.sampling, use_tqdm=False)
        if len(outputs) != len(conversations):
            raise RuntimeError(f"vLLM returned {len(outputs)} outputs for {len(conversations)} prompts")
        return [self.finish(o.outputs[0].text, truncated=getattr(o.outputs[0], "finish_reason", None) == "length")
                for o in outputs]

    def caption(self, images: list[Image.Image]) -> list[str | Exception]:
        return per_item_fallback(self._batch, self.conversations(images))


def build(spec: EngineSpec, **options: Any) -> VllmCaptioner:
    return VllmCaptioner(spec, **options)
