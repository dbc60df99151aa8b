"""FG-CLIP's weights on disk: building a model from a folder or a config, and the checkpoint layouts.

Checkpoint layouts (:func:`save_fgclip` writes the first, :func:`load_fgclip` reads all three):
  * ``upstream``: one HF folder whose weights hold the ``CLIPModel`` keys plus upstream FG-CLIP's
    ``text_model.embeddings.position_embedding_ori.weight`` / ``..._res.weight`` (248 rows each;
    upstream reads rows 0-19 from ``ori`` and 20-247 from ``res``), ``text_filip_projection.weight``,
    ``logit_scale_finegraind`` and ``logit_scale_hardneg``. Loads in upstream's
    ``FGCLIPModel.from_pretrained`` and in ``transformers.CLIPModel.from_pretrained`` (which ignores
    the five extra keys).
  * ``project``: a plain ``CLIPModel`` folder plus ``fgclip_extras.safetensors`` (this project's
    earlier layout; ``finehard convert --to project`` writes it).
  * ``clip``: a plain CLIP folder (e.g. OpenAI CLIP): the long path is built from it.
"""
from __future__ import annotations

import json
import logging
import os
from typing import Any

import torch
from torch import nn
from transformers import CLIPConfig, CLIPModel

from training.model import FGCLIP, unwrap

log = logging.getLogger("training.model")  # the name these lines always had

EXTRAS_FILE = "fgclip_extras.safetensors"
EXTRAS_CONFIG = "fgclip_config.json"


def build_model(model_path: str | None = None, model_config: str | dict | CLIPConfig | None = None,
                keep_len: int = 20) -> FGCLIP:
    """FGCLIP from a saved FG-CLIP/HF CLIP folder, or random-init from ``config:NAME`` (:mod:`training.named_configs`)
    or a CLIPConfig (json path or dict)."""
    from training.named_configs import clip_config_dict, is_named

    if is_named(model_path):  # config:vit-b-16 etc.: random init of a bundled architecture
        model_config, model_path = clip_config_dict(model_path), None
    if model_path:
        return load_fgclip(model_path, keep_len)
    if model_config is None:
        raise ValueError("pass --model PATH (a local CLIP checkpoint folder) or --model-config JSON (random init)")
    if isinstance(model_config, str):
        with open(model_config, encoding="utf-8") as f:
            model_config = json.load(f)
    if isinstance(model_config, dict):
        model_config = CLIPConfig(**model_config)
    return FGCLIP(CLIPModel(model_config), keep_len)


UPSTREAM_ORI = "text_model.embeddings.position_embedding_ori.weight"
UPSTREAM_RES = "text_model.embeddings.position_embedding_res.weight"
UPSTREAM_LONG_PROJ = "text_filip_projection.weight"
UPSTREAM_REGIONAL = "logit_scale_finegraind"  # sic: upstream's spelling
UPSTREAM_HARD = "logit_scale_hardneg"
UPSTREAM_KEYS = (UPSTREAM_ORI, UPSTREAM_RES, UPSTREAM_LONG_PROJ, UPSTREAM_REGIONAL, UPSTREAM_HARD)
UPSTREAM_SPLIT = 20  # upstream's CLIPTextEmbeddings reads rows < 20 from ``ori`` and the rest from ``res``
UPSTREAM_LONG_LEN = 248
LAYOUTS = ("upstream", "project")
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json")


def _load_weights_file(f: str) -> dict[str, Any]:
    """A ``.bin`` weights file through ``torch.load(weights_only=True)``: only tensors and plain containers
    are unpickled. A file holding anything else (code, other objects: a crafted pickle) is never run; it
    is a ``ValueError`` naming the file, which the commands print as one line."""
    import pickle

    try:
        state = torch.load(f, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, EOFError, RuntimeError, AttributeError, TypeError) as e:
        first = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
        raise ValueError(f"{f} is not a plain weights file that can be loaded safely ({type(e).__name__}: {first}); "
                         "it was not unpickled. Use a safetensors checkpoint, or re-save the weights as tensors "
                         "only") from None
    if not isinstance(state, dict):
        raise ValueError(f"{f} holds a {type(state).__name__}, not a mapping of tensor names to tensors")
    return state


def _weight_sources(path: str) -> dict[str, str]:
    """{tensor name: file} of the weights in an HF folder (single or sharded safetensors / .bin)."""
    for name in WEIGHT_FILES:
        f = os.path.join(path, name)
        if not os.path.isfile(f):
            continue
        if name.endswith(".index.json"):
            with open(f, encoding="utf-8") as fh:
                return {k: os.path.join(path, v) for k, v in json.load(fh)["weight_map"].items()}
        if name.endswith(".safetensors"):
            from safetensors import safe_open

            with safe_open(f, framework="pt") as st:
                return {k: f for k in st.keys()}
        return {k: f for k in _load_weights_file(f)}
    raise FileNotFoundError(f"no weights ({', '.join(WEIGHT_FILES)}) in {path!r}")


def read_weights(path: str, names: Any = None) -> dict[str, torch.Tensor]:
    """Tensors ``names`` (all when None; missing names are left out) of the HF folder ``path``."""
    sources = _weight_sources(path)
    wanted = [n for n in (sources if names is None else names) if n in sources]
    out: dict[str, torch.Tensor] = {}
    for f in sorted({sources[n] for n in wanted}):
        keys = [n for n in wanted if sources[n] == f]
        if f.endswith(".safetensors"):
            from safetensors import safe_open

            with safe_open(f, framework="pt") as st:
                out.update({k: st.get_tensor(k) for k in keys})
        else:
            state = _load_weights_file(f)
            out.update({k: state[k] for k in keys})
    return out


def checkpoint_layout(path: str) -> str:
    """``upstream`` (FG-CLIP keys in the weights), ``project`` (fgclip_extras.safetensors) or ``clip``."""
    present = [k for k in UPSTREAM_KEYS if k in _weight_sources(path)]
    if len(present) == len(UPSTREAM_KEYS):
        return "upstream"
    if present:  # never rebuild half of a trained FG-CLIP checkpoint silently
        missing = sorted(set(UPSTREAM_KEYS) - set(present))
        raise ValueError(f"{path}: has upstream FG-CLIP tensors {present} but not {missing}; "
                         "not a complete FG-CLIP checkpoint")
    if os.path.isfile(os.path.join(path, EXTRAS_FILE)):
        return "project"
    return "clip"


def fgclip_extras(model: nn.Module, layout: str = "upstream") -> dict[str, torch.Tensor]:
    """The FG-CLIP tensors beyond ``CLIPModel``'s, named as ``layout`` names them (detached, on the CPU)."""
    m = unwrap(model)
    t = {"long": m.long_position_embedding, "proj": m.long_text_projection.weight,
         "regional": m.regional_logit_scale, "hard": m.hard_logit_scale}
    t = {k: v.detach().cpu().contiguous() for k, v in t.items()}
    if layout == "upstream":
        if m.long_len != UPSTREAM_LONG_LEN:
            log.warning("long text table has %d rows; upstream FG-CLIP expects %d", m.long_len, UPSTREAM_LONG_LEN)
        # One table holds exactly the rows upstream reads; both of its tables get it (rows it ignores included).
        return {UPSTREAM_ORI: t["long"].clone(), UPSTREAM_RES: t["long"].clone(), UPSTREAM_LONG_PROJ: t["proj"],
                UPSTREAM_REGIONAL: t["regional"], UPSTREAM_HARD: t["hard"]}
    if layout == "project":
        return {"long_position_embedding": t["long"], "long_text_projection.weight": t["proj"],
                "regional_logit_scale": t["regional"], "hard_logit_scale": t["hard"]}
    raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")


def save_fgclip(model: nn.Module, path: str, tokenizer: Any = None, layout: str = "upstream",
                dtype: torch.dtype | None = None) -> None:
    """Write ``model`` as an HF folder in ``layout`` (see the module docstring) plus ``fgclip_config.json``.

    ``upstream``: ``model.safetensors`` holds the CLIPModel weights and upstream FG-CLIP's five extra
    tensors. ``project``: a plain CLIPModel folder plus ``fgclip_extras.safetensors``. ``dtype``
    casts the floating-point tensors (default: as they are).
    """
    from safetensors.torch import save_file

    m = unwrap(model)
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
    os.makedirs(path, exist_ok=True)
    for stale in (EXTRAS_FILE, *WEIGHT_FILES[1:]):  # an earlier save in another layout
        if os.path.isfile(os.path.join(path, stale)):
            os.remove(os.path.join(path, stale))
    state = {k: v.detach().cpu().contiguous() for k, v in m.clip.state_dict().items()}
    extras = fgclip_extras(m, layout)
    if dtype is not None:
        state = {k: v.to(dtype) if v.is_floating_point() else v for k, v in state.items()}
        extras = {k: v.to(dtype) if v.is_floating_point() else v for k, v in extras.items()}
    if layout == "upstream":
        state.update(extras)
    else:
        save_file(extras, os.path.join(path, EXTRAS_FILE), metadata={"format": "pt"})
    save_file(state, os.path.join(path, "model.safetensors"), metadata={"format": "pt"})
    config = m.clip.config
    config.architectures = ["CLIPModel"]
    config.save_pretrained(path)
    with open(os.path.join(path, EXTRAS_CONFIG), "w", encoding="utf-8") as f:
        json.dump({"layout": layout, "keep_len": m.keep_len, "long_len": m.long_len, "short_len": m.short_len},
                  f, indent=2)
    if tokenizer is not None and hasattr(tokenizer, "save_pretrained"):
        tokenizer.save_pretrained(path)


def _load_clip(path: str) -> CLIPModel:
    """The ``CLIPModel`` part of an HF folder in float32 (the FG-CLIP extras are read separately)."""
    from transformers.utils import logging as hf_logging

    level, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()  # the load report would list upstream's five extra tensors as unexpected
    hf_logging.disable_progress_bar()
    try:
        return CLIPModel.from_pretrained(path, local_files_only=True, dtype=torch.float32)
    finally:
        hf_logging.set_verbosity(level)
        if bars:
            hf_logging.enable_progress_bar()


def load_fgclip(path: str, keep_len: int = 20) -> FGCLIP:
    """FGCLIP from an HF folder in any layout (``upstream``, ``project`` or a plain ``clip``).

    A plain CLIP folder gets the long path built from its 77 positions (upstream's ``from_openai``);
    FG-CLIP folders continue from their long positions, long projection and temperatures.
    ``model.source_layout`` says which layout was read.
    """
    if not os.path.isdir(path):
        raise FileNotFoundError(f"model folder {path!r} not found; pass --model a local folder with config.json")
    layout = checkpoint_layout(path)
    clip = _load_clip(path)
    cfg_file = os.path.join(path, EXTRAS_CONFIG)
    if os.path.isfile(cfg_file):
        with open(cfg_file, encoding="utf-8") as f:
            keep_len = int(json.load(f).get("keep_len", keep_len))
    if layout == "upstream":
        keep_len = UPSTREAM_SPLIT
    model = FGCLIP(clip, keep_len)
    model.source_layout = layout
    if layout == "clip":
        return model
    if layout == "upstream":
        t = read_weights(path, UPSTREAM_KEYS)
        long = torch.cat([t[UPSTREAM_ORI][:UPSTREAM_SPLIT], t[UPSTREAM_RES][UPSTREAM_SPLIT:]])
        values = {"long": long, "proj": t[UPSTREAM_LONG_PROJ], "regional": t[UPSTREAM_REGIONAL],
                  "hard": t[UPSTREAM_HARD]}
    else:
        from safetensors.torch import load_file

        t = load_file(os.path.join(path, EXTRAS_FILE))
        values = {"long": t["long_position_embedding"], "proj": t["long_text_projection.weight"],
                  "regional": t["regional_logit_scale"], "hard": t["hard_logit_scale"]}
    if values["long"].shape[1] != model.long_position_embedding.shape[1]:
        raise ValueError(f"{path}: long position table width {values['long'].shape[1]} does not match the model")
    with torch.no_grad():
        model.long_position_embedding = nn.Parameter(values["long"].float().clone())
        model.long_text_projection.weight.copy_(values["proj"])
        model.regional_logit_scale.copy_(values["regional"].reshape(()))
        model.hard_logit_scale.copy_(values["hard"].reshape(()))
    return model
