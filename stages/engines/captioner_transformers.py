"""Recaption with a local Hugging Face VLM: ``transformers:/models/cogvlm2?trust_remote_code=true``."""
from __future__ import annotations

import inspect
from typing import Any, Optional, Sequence

from PIL import Image

from core.engines import EngineSpec
from stages.engines.captioner_base import CaptionerBase, per_item_fallback, resolve_options


class TransformersCaptioner(CaptionerBase):
    """A local Hugging Face VLM, batched ``generate``; CogVLM2 through its remote code (opt-in only).

    ``trust_remote_code`` is off unless the user turns it on (``?trust_remote_code=true`` on the
    spec, or the ``trust_remote_code`` keyword from a flag); it never comes from the data.
    """

    engine = "transformers"

    def __init__(self, spec: EngineSpec, model: Optional[Any] = None, processor: Optional[Any] = None,
                 tokenizer: Optional[Any] = None, **options: Any):
        import torch

        path, opts = resolve_options(spec, options)
        super().__init__(spec.model or path, opts)
        self.torch = torch
        self.trust_remote_code = opts.get("trust_remote_code") is True
        device = str(opts.get("device") or ("cuda" if torch.cuda.is_available() else "cpu"))
        dtype = getattr(torch, str(opts.get("dtype") or ("bfloat16" if device.startswith("cuda") else "float32")))
        if model is None:
            model, processor, tokenizer = self._load(path, device, dtype)
        self.model, self.processor, self.tokenizer = model, processor, tokenizer
        self.cogvlm = hasattr(model, "build_conversation_input_ids")
        if self.processor is not None and getattr(self.processor, "tokenizer", None) is not None:
            self.processor.tokenizer.padding_side = "left"  # batched generation continues on the right
        self.provenance.update({"dtype": str(dtype).replace("torch.", ""), "trust_remote_code": self.trust_remote_code,
                                "family": "cogvlm2" if self.cogvlm else "hf-image-text-to-text"})

    def _load(self, path: str, device: str, dtype: Any) -> tuple[Any, Any, Any]:
        import transformers

        common = {"local_files_only": True, "trust_remote_code": self.trust_remote_code}
        try:
            config = transformers.AutoConfig.from_pretrained(path, **common)
        except ValueError as e:
            if "trust_remote_code" in str(e) and not self.trust_remote_code:
                raise ValueError(f"{path} needs its own model code (e.g. CogVLM2); if you trust it, pass "
                                 "transformers:PATH?trust_remote_code=true or --captioner-trust-remote-code") from e
            raise
        if "cogvlm" in str(getattr(config, "model_type", "")).lower():
            tokenizer = transformers.AutoTokenizer.from_pretrained(path, **common)
            model = transformers.AutoModelForCausalLM.from_pretrained(path, dtype=dtype, **common)
            return model.to(device).eval(), None, tokenizer
        processor = transformers.AutoProcessor.from_pretrained(path, **common)
        model = transformers.AutoModelForImageTextToText.from_pretrained(path, dtype=dtype, **common)
        return model.to(device).eval(), processor, None

    def _device_dtype(self) -> tuple[Any, Any]:
        param = next(self.model.parameters())
        return param.device, param.dtype

    def hf_inputs(self, images: Sequence[Image.Image]) -> Any:
        """Processor inputs for a batch: one chat per image, left-padded."""
        conversations = [[{"role": "user", "content": [{"type": "image", "image": self.prepare(im)},
                                                       {"type": "text", "text": self.prompt}]}] for im in images]
        padding = {"padding": True, "padding_side": "left"}
        # transformers >= 5 takes processor arguments as processor_kwargs; 4.x as plain keywords.
        takes_dict = "processor_kwargs" in inspect.signature(self.processor.apply_chat_template).parameters
        inputs = self.processor.apply_chat_template(conversations, add_generation_prompt=True, tokenize=True,
                                                    return_dict=True, return_tensors="pt",
                                                    **({"processor_kwargs": padding} if takes_dict else padding))
        device, dtype = self._device_dtype()
        return inputs.to(device, dtype=dtype) if hasattr(inputs, "to") else inputs

    def cogvlm_inputs(self, images: Sequence[Image.Image]) -> dict[str, Any]:
        """CogVLM2's own ``build_conversation_input_ids`` per image, collated with left padding."""
        torch = self.torch
        device, dtype = self._device_dtype()
        pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 128002
        feats = [self.model.build_conversation_input_ids(self.tokenizer, query=self.prompt, history=[],
                                                         images=[self.prepare(im)], template_version="chat")
                 for im in images]
        width = max(len(f["input_ids"]) for f in feats)

        def left_pad(t: Any, value: int) -> Any:
            return torch.cat([torch.full((width - len(t),), value, dtype=t.dtype), t])
        return {"input_ids": torch.stack([left_pad(f["input_ids"], pad_id) for f in feats]).to(device),
                "token_type_ids": torch.stack([left_pad(f["token_type_ids"], 0) for f in feats]).to(device),
                "attention_mask": torch.stack([left_pad(f["attention_mask"], 0) for f in feats]).to(device),
                "images": [[f["images"][0].to(device, dtype=dtype)] for f in feats],
                "pad_token_id": pad_id}

    def _batch(self, images: list[Image.Image]) -> list[str | Exception]:
        inputs = self.cogvlm_inputs(images) if self.cogvlm else dict(self.hf_inputs(images))
        with self.torch.inference_mode():
            out = self.model.generate(**inputs, max_new_tokens=self.max_tokens, do_sample=False)
        new = out[:, inputs["input_ids"].shape[1]:]
        decoder = self.tokenizer if self.cogvlm else self.processor
        texts = decoder.batch_decode(new, skip_special_tokens=True)
        eos = getattr(getattr(self.model, "generation_config", None), "eos_token_id", None)
        eos_ids = set(eos if isinstance(eos, (list, tuple)) else [eos]) - {None}
        return [self.finish(t, truncated=bool(eos_ids) and len(row) >= self.max_tokens
                            and not eos_ids & set(row.tolist())) for t, row in zip(texts, new)]

    def caption(self, images: list[Image.Image]) -> list[str | Exception]:
        return per_item_fallback(self._batch, list(images))


def build(spec: EngineSpec, **options: Any) -> TransformersCaptioner:
    return TransformersCaptioner(spec, **options)
