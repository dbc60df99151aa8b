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

Loading and saving (the checkpoint layouts) live in :mod:`training.weights`.
"""
from __future__ import annotations

import logging
import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from transformers import CLIPConfig, CLIPModel

from training.roi import roi_align

log = logging.getLogger(__name__)

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
