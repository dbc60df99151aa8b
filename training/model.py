"""FG-CLIP on top of ``transformers.CLIPModel``: long-text positions, dense region features, extra temperatures.

Text paths (exact):
  * long captions use ``long_position_embedding`` (248 rows, built from the 77-row table by
    :func:`extend_positions`: rows 0..19 copied, the remaining 57 rows interpolated 4x as in
    Long-CLIP/FG-CLIP, the last segment extrapolated) and ``long_text_projection`` (initialised as a
    copy of ``text_projection``);
  * short captions, region texts and hard negatives use the CLIP model's own 77-row
    ``position_embedding`` and ``text_projection``.
Pooling reads the last attended token (the EOS, with right padding), for any tokenizer.

Dense features follow upstream FG-CLIP (``forward_without_attn``): the last vision block keeps its
value path but drops the query/key attention, ``h = x + out_proj(v_proj(ln_1(x)))`` then
``h = h + mlp(ln_2(h))``; CLS is dropped, then post-layernorm and visual projection; RoIAlign
(1x1, aligned=True) pools each box.

Temperatures: ``regional_logit_scale`` and ``hard_logit_scale`` start from the CLIP model's own
``logit_scale`` (ln 100 for OpenAI CLIP), as upstream's ``train_fgclip.py`` sets them.

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
import math
import os
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from transformers import CLIPConfig, CLIPModel

from training.roi import roi_align

log = logging.getLogger(__name__)

EXTRAS_FILE = "fgclip_extras.safetensors"
EXTRAS_CONFIG = "fgclip_config.json"
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def extend_positions(table: torch.Tensor, keep_len: int = 20) -> torch.Tensor:
    """Long-CLIP/FG-CLIP extension of an (L, D) position table to (4L - 3*keep_len, D): 77 -> 248."""
    length = table.shape[0]
    if not 1 < keep_len < length - 1:
        raise ValueError(f"keep_len must be in (1, {length - 1}), got {keep_len}")
    w = torch.arange(4, dtype=table.dtype, device=table.device) / 4  # 0, 1/4, 2/4, 3/4
    rest = table[keep_len:]
    a, b = rest[:-1], rest[1:]
    interp = (a[:, None, :] * (1 - w)[None, :, None] + b[:, None, :] * w[None, :, None]).reshape(-1, table.shape[1])
    last = table[-1][None, :] + w[:, None] * (table[-1] - table[-2])[None, :]
    return torch.cat([table[:keep_len], interp, last], dim=0)


def normalize_pixels(pixel_values: torch.Tensor) -> torch.Tensor:
    """uint8 (B,3,S,S) images -> CLIP-normalised floats on their device; float input is taken as normalised."""
    if pixel_values.dtype != torch.uint8:
        return pixel_values
    mean = torch.tensor(CLIP_MEAN, device=pixel_values.device)[:, None, None]
    std = torch.tensor(CLIP_STD, device=pixel_values.device)[:, None, None]
    return (pixel_values.float() / 255.0 - mean) / std


def tiny_clip_config(hidden: int = 64, layers: int = 2, heads: int = 4, image_size: int = 64, patch_size: int = 16,
                     vocab_size: int = 4096, projection_dim: int = 64) -> CLIPConfig:
    """A small random-init CLIP config for tests and CPU benchmarks (eos/bos/pad match SimpleWordTokenizer)."""
    text = dict(vocab_size=vocab_size, hidden_size=hidden, intermediate_size=hidden * 4, num_hidden_layers=layers,
                num_attention_heads=heads, max_position_embeddings=77, bos_token_id=vocab_size - 2,
                eos_token_id=vocab_size - 1, pad_token_id=0)
    vision = dict(hidden_size=hidden, intermediate_size=hidden * 4, num_hidden_layers=layers, num_attention_heads=heads,
                  image_size=image_size, patch_size=patch_size)
    return CLIPConfig(text_config=text, vision_config=vision, projection_dim=projection_dim)


class FGCLIP(nn.Module):
    """A CLIPModel plus FG-CLIP's long-text path, dense region features and regional/hard temperatures."""

    def __init__(self, clip: CLIPModel, keep_len: int = 20) -> None:
        super().__init__()
        self.clip = clip
        self.keep_len = keep_len
        base = clip.text_model.embeddings.position_embedding.weight.detach()
        self.long_position_embedding = nn.Parameter(extend_positions(base.float(), keep_len).to(base.dtype))
        proj = clip.text_projection
        self.long_text_projection = nn.Linear(proj.in_features, proj.out_features, bias=False)
        with torch.no_grad():
            self.long_text_projection.weight.copy_(proj.weight)
        init = clip.logit_scale.detach().float().clone()  # upstream: both start from the model's logit_scale
        self.regional_logit_scale = nn.Parameter(init.clone().to(clip.logit_scale.dtype))
        self.hard_logit_scale = nn.Parameter(init.clone().to(clip.logit_scale.dtype))
        self.source_layout = "config"  # set by load_fgclip: upstream, project or clip
        self.roi_impl = "auto"  # RoIAlign: auto, torchvision or torch (training.roi); --roi-align

    def enable_checkpointing(self) -> None:
        """Recompute every encoder block in backward (HF activation/gradient checkpointing)."""
        fn = getattr(self.clip, "activation_checkpointing_enable", None) or self.clip.gradient_checkpointing_enable
        fn()

    @property
    def short_len(self) -> int:
        return self.clip.text_model.embeddings.position_embedding.weight.shape[0]

    @property
    def long_len(self) -> int:
        return self.long_position_embedding.shape[0]

    def set_stage(self, stage: int) -> None:
        """Stage 1 trains no regional/hard temperature (kept out of DDP's unused-parameter check)."""
        self.regional_logit_scale.requires_grad_(stage == 2)
        self.hard_logit_scale.requires_grad_(stage == 2)

    @torch.no_grad()
    def tie_temperatures(self) -> None:
        """Set the regional and hard temperatures to the global ``logit_scale``.

        Upstream's ``train_fgclip.py`` does this at the start of every stage-2 run; here stage 1
        (which does not train them) keeps them equal to the global one, so stage 2 from a stage-1
        model starts where upstream would, while a trained FG-CLIP checkpoint keeps its own.
        """
        self.regional_logit_scale.copy_(self.clip.logit_scale)
        self.hard_logit_scale.copy_(self.clip.logit_scale)

    def encode_text(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, long: bool = False) -> torch.Tensor:
        """L2-normalised text features; ``long`` selects the 248-position table and long projection."""
        tm = self.clip.text_model
        n, length = input_ids.shape
        table = self.long_position_embedding if long else tm.embeddings.position_embedding.weight
        if length > table.shape[0]:
            raise ValueError(f"text of {length} tokens exceeds the {table.shape[0]} positions of this path")
        h = tm.embeddings.token_embedding(input_ids) + table[:length].unsqueeze(0)
        mask = None
        if self.clip.config.text_config._attn_implementation != "sdpa":
            mask = torch.full((length, length), torch.finfo(h.dtype).min, device=h.device).triu(1)[None, None]
        for layer in tm.encoder.layers:
            h = layer(h, mask, is_causal=True)
        h = tm.final_layer_norm(h)
        eos = (attention_mask.sum(dim=1) - 1).clamp(min=0)
        pooled = h[torch.arange(n, device=h.device), eos]
        proj = self.long_text_projection if long else self.clip.text_projection
        return F.normalize(proj(pooled), dim=-1)

    def encode_texts_bucketed(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                              buckets: int = 4) -> torch.Tensor:
        """Short-path features of many texts, sorted by length and run in ``buckets`` trimmed chunks.

        With causal attention and EOS pooling, trailing padding never changes a text's feature, so
        trimming each chunk to its longest member gives the same result for less work.
        """
        n = input_ids.shape[0]
        if n <= 1 or buckets <= 1:
            return self.encode_text(input_ids, attention_mask)
        lengths = attention_mask.sum(dim=1)
        order = torch.argsort(lengths)
        parts = []
        for chunk in torch.chunk(order, min(buckets, n)):
            width = int(lengths[chunk].max())
            parts.append(self.encode_text(input_ids[chunk, :width], attention_mask[chunk, :width]))
        feats = torch.cat(parts)
        return feats[torch.argsort(order)]

    def encode_image(self, pixel_values: torch.Tensor, dense: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(L2-normalised global features (B, P), dense patch grid (B, P, G, G) or None); uint8 or normalised input."""
        vm = self.clip.vision_model
        pixel_values = normalize_pixels(pixel_values)
        interp = pixel_values.shape[-1] != self.clip.config.vision_config.image_size
        h = vm.pre_layrnorm(vm.embeddings(pixel_values, interpolate_pos_encoding=interp))
        layers = vm.encoder.layers
        for layer in layers[:-1]:
            h = layer(h, None)
        last = layers[-1]
        g = last(h, None)
        glob = F.normalize(self.clip.visual_projection(vm.post_layernorm(g[:, 0])), dim=-1)
        if not dense:
            return glob, None
        attn = last.self_attn  # upstream forward_without_attn: value path kept, no query/key attention
        d = h + attn.out_proj(attn.v_proj(last.layer_norm1(h)))
        d = d + last.mlp(last.layer_norm2(d))
        d = self.clip.visual_projection(vm.post_layernorm(d[:, 1:]))
        b, n, p = d.shape
        grid = int(round(math.sqrt(n)))
        return glob, d.transpose(1, 2).reshape(b, p, grid, grid)

    @staticmethod
    def region_features(dense: torch.Tensor, boxes: torch.Tensor, impl: str = "auto") -> torch.Tensor:
        """RoIAlign (1x1, aligned) of normalised xyxy ``boxes`` (N, 5: batch index + box) on the grid; L2-normalised.

        ``impl``: ``torchvision``, ``torch`` (plain torch ops, any device) or ``auto`` (torchvision's
        kernel where the device has one, e.g. not on an Ascend NPU); see :mod:`training.roi`.
        """
        if boxes.shape[0] == 0:
            return dense.new_zeros((0, dense.shape[1])) + dense.sum() * 0
        grid = dense.shape[-1]
        pooled = roi_align(dense.float(), boxes.to(dense.device, torch.float32), output_size=1,
                           spatial_scale=float(grid), sampling_ratio=-1, aligned=True, impl=impl)
        return F.normalize(pooled.flatten(1), dim=-1)

    def forward(self, batch: dict[str, Any], regional: bool = False) -> dict[str, torch.Tensor]:
        """Features for the losses: image/long/short always; region/hard features when ``regional``."""
        glob, dense = self.encode_image(batch["pixel_values"], dense=regional)
        out = {"image": glob,
               "long_text": self.encode_text(batch["long_ids"], batch["long_mask"], long=True),
               "short_text": self.encode_text(batch["short_ids"], batch["short_mask"], long=False)}
        if regional:
            region = self.region_features(dense, batch["region_boxes"], self.roi_impl)
            out["region"] = region
            if batch["expr_ids"].shape[0]:
                texts = self.encode_texts_bucketed(batch["expr_ids"], batch["expr_mask"])  # each distinct text once
            else:
                texts = region.new_zeros((0, region.shape[1]))
            out["region_text"] = texts[batch["region_text_index"]]
            out["hard_region"] = region[batch["hard_index"]]
            out["hard_text"] = texts[batch["hard_text_index"]]  # (H, 11, P)
        return out


def unwrap(model: nn.Module) -> FGCLIP:
    """The FGCLIP inside a DDP/DeepSpeed wrapper."""
    while hasattr(model, "module") and not isinstance(model, FGCLIP):
        model = model.module
    return model  # type: ignore[return-value]


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


# --- checkpoint layouts --------------------------------------------------------------------------

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
