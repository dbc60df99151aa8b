"""What the real recaptioning engines share: ``openai:URL#MODEL``, ``vllm:PATH`` and ``transformers:PATH``.

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
import io
import re
from typing import Any, Callable

from PIL import Image

from core.engines import Captioner, EngineSpec
from prompts import load_prompt
from core.record import SampleError
from stages.engines import ENGINE_OPTION_KEYS, engine_options

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
    return engine_options(spec.target, options, CAPTION_OPTION_KEYS)  # '/m?max_side=768&x=1' -> '/m?x=1'


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


class CaptionerBase(Captioner):
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
