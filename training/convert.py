"""``finehard convert SRC DST``: FG-CLIP checkpoints between upstream's layout and this project's.

Layouts (see :mod:`training.weights`):
  * ``upstream``: what 360CVGroup/FG-CLIP's ``FGCLIPModel`` saves and loads (the CLIPModel weights plus
    ``position_embedding_ori``/``_res`` (248 rows), ``text_filip_projection``, ``logit_scale_finegraind``,
    ``logit_scale_hardneg`` in the same weights file). ``finehard train`` writes ``final/`` this way.
  * ``project``: a plain ``CLIPModel`` folder (no extra keys) plus ``fgclip_extras.safetensors``.
SRC may also be a plain CLIP folder (e.g. OpenAI CLIP): the long-text path is then built from its
77 positions, as upstream's ``--from_openai True`` does. Tokenizer and image-processor files are
copied along. Floating-point weights keep SRC's dtype unless ``--dtype`` says otherwise. The command
line is ``training.cli.convert_main`` (it checks its arguments before this module imports torch).
"""
from __future__ import annotations

import os
import shutil

import torch

from core.cli_help import DefaultsHelpFormatter

COPY_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "merges.txt", "special_tokens_map.json",
              "preprocessor_config.json", "simple_word_tokenizer.json", "train_config.json")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def source_dtype(path: str) -> torch.dtype:
    """The dtype of SRC's visual projection (its weights' dtype)."""
    from training.weights import read_weights

    t = read_weights(path, ["visual_projection.weight"]).get("visual_projection.weight")
    return t.dtype if t is not None else torch.float32


def convert(src: str, dst: str, to: str | None = None, dtype: str | None = None) -> dict[str, str]:
    """Convert the checkpoint folder ``src`` into ``dst`` in layout ``to`` (default: the other one)."""
    from training.weights import LAYOUTS, load_fgclip, save_fgclip

    if not os.path.isdir(src):
        raise FileNotFoundError(f"SRC {src!r} is not a folder; pass a local HF-format checkpoint folder")
    if os.path.abspath(src) == os.path.abspath(dst):
        raise ValueError("DST must differ from SRC")
    model = load_fgclip(src)
    source = model.source_layout
    to = to or ("project" if source == "upstream" else "upstream")
    if to not in LAYOUTS:
        raise ValueError(f"--to must be one of {LAYOUTS}, got {to!r}")
    out_dtype = DTYPES[dtype] if dtype else source_dtype(src)
    save_fgclip(model, dst, layout=to, dtype=out_dtype)
    for name in COPY_FILES:
        if os.path.isfile(os.path.join(src, name)):
            shutil.copy2(os.path.join(src, name), os.path.join(dst, name))
    return {"src": src, "from": source, "dst": dst, "to": to, "dtype": str(out_dtype).replace("torch.", "")}
