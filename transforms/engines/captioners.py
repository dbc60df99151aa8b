"""Real recaptioning engines: ``openai:URL#MODEL``, ``vllm:PATH`` and ``transformers:PATH``.

All three share the prompt (``prompts/recaption.txt``, hashed into provenance), resize a copy of
each image so its longer side is at most ``max_side`` (the stored original is never touched),
and clean the answer (:func:`clean_caption` strips preambles such as "In this image,").
Interface: ``caption(images) -> list[str | Exception]``, one entry per image, in order; a
:class:`~transforms.common.SampleError` names why one image got no caption.

Options come as keywords (from pipeline flags) and as ``?key=value`` on the spec's target;
the spec's own options win. ``vllm``, ``torch`` and ``transformers`` are imported lazily.
"""
from __future__ import annotations

import base64
import inspect
import io
import json
import re
from typing import Any, Callable, Optional, Sequence

from PIL import Image

from core.engines import EngineSpec
from prompts import load_prompt
from transforms.common import SampleError
from transforms.engines import ENGINE_OPTION_KEYS, split_coerced

DEFAULT_PROMPT = "recaption.txt"
DEFAULT_MAX_SIDE = 1024
DEFAULT_MAX_TOKENS = 512
CAPTION_OPTION_KEYS = ENGINE_OPTION_KEYS | {"max_side", "prompt", "strip_preamble", "jpeg_quality", "device",
                                            "max_num_seqs", "limit_mm_per_prompt"}

# Openers VLMs put before the description; removed (repeatedly) from the start of an answer.
_PREAMBLE = re.compile(
    r"^\s*(?:"
    r"(?:sure|certainly|of course|okay)[,!.]\s*(?:here(?: is|'s) [^.:]*[.:])?"
    r"|here(?: is|'s) (?:a |an |the )?(?:detailed )?description(?: of (?:the|this) image)?\s*[:.]"
    r"|(?:in|within) (?:this|the) (?:image|picture|photo(?:graph)?|scene)\s*[,:]?"
    r"|(?:this|the) (?:image|picture|photo(?:graph)?|scene) (?:shows|depicts|features|displays|captures|"
    r"presents|contains|portrays|showcases)\s*:?"
    r")\s*", re.IGNORECASE)


def resolve_options(spec: EngineSpec, options: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """The spec's target without engine options, and keyword options overridden by the spec's."""
    target, spec_options = split_coerced(spec.target, CAPTION_OPTION_KEYS)  # '/m?max_side=768&x=1' -> '/m?x=1'
    return target, {**{k: v for k, v in options.items() if v is not None}, **spec_options}


def clean_caption(text: str, strip_preamble: bool = True) -> str:
    """One line of text; leading "In this image," / "The image shows" and markdown bold removed."""
    text = " ".join((text or "").replace("**", "").split())
    if not strip_preamble:
        return text
    for _ in range(3):
        stripped = _PREAMBLE.sub("", text, count=1)
        if stripped == text:
            break
        text = stripped
    return text[:1].upper() + text[1:]


def fit_max_side(image: Image.Image, max_side: int) -> Image.Image:
    """An RGB copy whose longer side is at most ``max_side``; the given image is left as it was."""
    rgb = image.convert("RGB")  # always a new image, so resizing never touches the caller's
    w, h = rgb.size
    if max_side > 0 and max(w, h) > max_side:
        scale = max_side / max(w, h)
        rgb = rgb.resize((max(1, round(w * scale)), max(1, round(h * scale))), Image.Resampling.BICUBIC)
    return rgb


def image_data_uri(image: Image.Image, quality: int = 90) -> str:
    """``data:image/jpeg;base64,...`` of an RGB image."""
    buf = io.BytesIO()
    image.save(buf, format="JPEG", quality=quality)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def caption_messages(prompt: str, image_url: str) -> list[dict[str, Any]]:
    """One user turn: the image (as an ``image_url``) then the instruction."""
    return [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": image_url}},
                                         {"type": "text", "text": prompt}]}]


def per_item_fallback(run_batch: Callable[[list[Any]], list[Any]], items: list[Any]) -> list[Any]:
    """``run_batch(items)``; if the batch raises, each item alone, so one bad input fails only itself."""
    try:
        return run_batch(items)
    except Exception:  # noqa: BLE001 - retried item by item below
        if len(items) <= 1:
            raise
    out: list[Any] = []
    for item in items:
        try:
            out.extend(run_batch([item]))
        except Exception as e:  # noqa: BLE001 - this item's failure, returned in its place
            out.append(SampleError("engine_error", f"{type(e).__name__}: {e}"))
    return out


class CaptionerBase:
    """Prompt, resizing and provenance shared by the real captioners."""

    engine = "base"

    def __init__(self, model_name: str, opts: dict[str, Any]):
        self.prompt_name = str(opts.get("prompt") or DEFAULT_PROMPT)
        self.prompt, self.prompt_hash = load_prompt(self.prompt_name)
        self.prompt = self.prompt.strip()
        self.max_side = int(opts.get("max_side") or DEFAULT_MAX_SIDE)
        self.max_tokens = int(opts.get("max_tokens") or DEFAULT_MAX_TOKENS)
        self.temperature = float(opts.get("temperature", 0.0))
        self.strip_preamble = bool(opts.get("strip_preamble", True))
        self.jpeg_quality = int(opts.get("jpeg_quality", 90))
        self.provenance: dict[str, Any] = {"engine": self.engine, "model": model_name, "prompt": self.prompt_name,
                                           "prompt_hash": self.prompt_hash, "max_side": self.max_side,
                                           "stub": False}

    def get_provenance(self) -> dict[str, Any]:
        """Provenance through a method too: a model shared across processes is reached by proxy."""
        return self.provenance

    def prepare(self, image: Image.Image) -> Image.Image:
        return fit_max_side(image, self.max_side)

    def finish(self, text: Any, truncated: bool = False) -> str | Exception:
        """The cleaned caption, or why there is none."""
        if not isinstance(text, str):
            return SampleError("malformed_answer", f"caption is {type(text).__name__}, not text")
        if truncated and "." in text:
            text = text[:text.rfind(".") + 1]  # hit max_tokens: keep whole sentences only
        text = clean_caption(text, self.strip_preamble)
        return text if text else SampleError("empty_caption", "the model answered with no text")


class OpenAICaptioner(CaptionerBase):
    """An OpenAI-compatible server (LMDeploy serving CogVLM2, ``vllm serve``): concurrent requests."""

    engine = "openai"

    def __init__(self, spec: EngineSpec, client: Optional[Any] = None, **options: Any):
        from transforms.engines.openai_client import OpenAIClient

        base_url, opts = resolve_options(spec, options)
        super().__init__(spec.model or "default", opts)
        self.client = client or OpenAIClient(base_url, model=spec.model, timeout=float(opts.get("timeout", 120)),
                                             retries=int(opts.get("retries", 2)),
                                             concurrency=int(opts.get("concurrency", 8)))
        self.extras = {"max_tokens": self.max_tokens, "temperature": self.temperature}
        if "top_p" in opts:
            self.extras["top_p"] = float(opts["top_p"])
        if "seed" in opts:
            self.extras["seed"] = int(opts["seed"])
        self.provenance["base_url"] = base_url

    def request(self, image: Image.Image) -> dict[str, Any]:
        """The chat-completion request body for one image."""
        body: dict[str, Any] = {"messages": caption_messages(self.prompt, image_data_uri(self.prepare(image),
                                                                                         self.jpeg_quality)),
                                **self.extras}
        if self.client.model:
            body["model"] = self.client.model
        return body

    def _one(self, image: Image.Image) -> str | Exception:
        from transforms.engines.openai_client import OpenAIError, OpenAITimeout

        try:
            answer = self.client.post_json("chat/completions", self.request(image))
        except OpenAITimeout as e:
            return SampleError("caption_timeout", str(e))
        except OpenAIError as e:
            if e.status == 200:
                return SampleError("malformed_answer", str(e))
            return SampleError("caption_request_failed", str(e))
        try:
            choice = answer["choices"][0]
            text = choice["message"]["content"]
        except (KeyError, IndexError, TypeError):
            return SampleError("malformed_answer", f"no choices[0].message.content in {json.dumps(answer)[:200]}")
        return self.finish(text, truncated=choice.get("finish_reason") == "length")

    def caption(self, images: list[Image.Image]) -> list[str | Exception]:
        return self.client.map(self._one, images)


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


def build_openai(spec: EngineSpec, **options: Any) -> OpenAICaptioner:
    return OpenAICaptioner(spec, **options)


def build_vllm(spec: EngineSpec, **options: Any) -> VllmCaptioner:
    return VllmCaptioner(spec, **options)


def build_transformers(spec: EngineSpec, **options: Any) -> TransformersCaptioner:
    return TransformersCaptioner(spec, **options)
