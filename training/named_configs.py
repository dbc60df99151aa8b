"""Named CLIP architectures for a random-init start: ``--model config:vit-b-16`` (no CLIP folder needed).

Pure data (no torch/transformers import) so that the command line can check a name at once.
``tiny`` is the CPU-test size; ``vit-b-16``, ``vit-l-14`` and ``vit-l-14-336`` are OpenAI CLIP's
shapes, the backbones of upstream's ``fg-clip-base`` (ViT-B/16, 224 px) and ``fg-clip-large``
(ViT-L/14, 336 px). Token ids: pad 0, bos ``vocab - 2``, eos ``vocab - 1`` (OpenAI's 49406/49407 for
its 49408-token vocabulary), which the offline ``SimpleWordTokenizer`` uses too.
"""
from __future__ import annotations

from typing import Any

PREFIX = "config:"
# name: (text width, text layers, text heads, vocab), (vision width, layers, heads, image size, patch), projection
ARCHITECTURES: dict[str, tuple[tuple[int, int, int, int], tuple[int, int, int, int, int], int]] = {
    "tiny": ((64, 2, 4, 4096), (64, 2, 4, 64, 16), 64),
    "vit-b-16": ((512, 12, 8, 49408), (768, 12, 12, 224, 16), 512),
    "vit-l-14": ((768, 12, 12, 49408), (1024, 24, 16, 224, 14), 768),
    "vit-l-14-336": ((768, 12, 12, 49408), (1024, 24, 16, 336, 14), 768),
}


def is_named(model: str | None) -> bool:
    """Whether ``--model`` names a bundled architecture (``config:NAME``) rather than a folder."""
    return bool(model) and model.startswith(PREFIX)


def check_name(model: str) -> str:
    """The architecture name of ``config:NAME``; ValueError (saying the choices) for an unknown one."""
    name = model[len(PREFIX):]
    if name not in ARCHITECTURES:
        raise ValueError(f"--model {model!r}: unknown architecture; use one of "
                         f"{', '.join(PREFIX + n for n in ARCHITECTURES)} or a local CLIP folder")
    return name


def clip_config_dict(model: str) -> dict[str, Any]:
    """``CLIPConfig`` keyword arguments of ``config:NAME`` (random init)."""
    (tw, tl, th, vocab), (vw, vl, vh, image, patch), proj = ARCHITECTURES[check_name(model)]
    text = dict(vocab_size=vocab, hidden_size=tw, intermediate_size=4 * tw, num_hidden_layers=tl,
                num_attention_heads=th, max_position_embeddings=77, bos_token_id=vocab - 2, eos_token_id=vocab - 1,
                pad_token_id=0)
    vision = dict(hidden_size=vw, intermediate_size=4 * vw, num_hidden_layers=vl, num_attention_heads=vh,
                  image_size=image, patch_size=patch)
    return {"text_config": text, "vision_config": vision, "projection_dim": proj}
