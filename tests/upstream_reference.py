"""A small reference of upstream FG-CLIP's feature maths (360CVGroup/FG-CLIP v1.0), for the tests.

Written from the formulas in upstream's ``fgclip/model/clip_strc/fgclip.py`` and ``modeling_clip.py``
on a plain state dict in upstream's key layout, independent of ``training/``:
  * text: token embedding + positions; the short path adds ``position_embedding`` (77 rows), the long
    path adds ``position_embedding_ori`` for positions < 20 and ``position_embedding_res`` from 20 on
    (both 248 rows); causal pre-LN transformer; final LayerNorm; the feature at the first EOS token;
    ``text_projection`` (short) or ``text_filip_projection`` (long);
  * image: patch conv + class token + positions, ``pre_layrnorm``, blocks; global = CLS of the last
    block through ``post_layernorm`` and ``visual_projection``; dense (``forward_without_attn``) = the
    last block's input ``x`` through ``h = x + out_proj(v_proj(ln1(x)))``, ``h = h + mlp(ln2(h))``,
    CLS dropped, ``post_layernorm``, ``visual_projection``;
  * regions: the dense grid (B, P, G, G) and boxes scaled to grid units, ``roi_align(.., (1, 1), 1.0,
    -1, True)`` as upstream calls it.
All features are L2-normalised here (upstream normalises before every similarity).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torchvision.ops import roi_align

SPLIT = 20


def expected_upstream_keys(config) -> set[str]:
    """Every tensor name upstream's ``FGCLIPModel`` holds (its ``state_dict``), for ``config``."""
    keys = set()
    for tower, cfg in (("text_model", config.text_config), ("vision_model", config.vision_config)):
        for i in range(cfg.num_hidden_layers):
            p = f"{tower}.encoder.layers.{i}."
            for lin in ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.out_proj",
                        "mlp.fc1", "mlp.fc2", "layer_norm1", "layer_norm2"):
                keys |= {p + lin + ".weight", p + lin + ".bias"}
    keys |= {"text_model.embeddings.token_embedding.weight", "text_model.embeddings.position_embedding.weight",
             "text_model.embeddings.position_embedding_res.weight", "text_model.embeddings.position_embedding_ori.weight",
             "text_model.final_layer_norm.weight", "text_model.final_layer_norm.bias",
             "vision_model.embeddings.class_embedding", "vision_model.embeddings.patch_embedding.weight",
             "vision_model.embeddings.position_embedding.weight", "vision_model.pre_layrnorm.weight",
             "vision_model.pre_layrnorm.bias", "vision_model.post_layernorm.weight", "vision_model.post_layernorm.bias",
             "visual_projection.weight", "text_projection.weight", "text_filip_projection.weight",
             "logit_scale", "logit_scale_finegraind", "logit_scale_hardneg"}
    return keys


def _ln(sd, name, x, eps=1e-5):
    return F.layer_norm(x, x.shape[-1:], sd[name + ".weight"], sd[name + ".bias"], eps)


def _lin(sd, name, x):
    return F.linear(x, sd[name + ".weight"], sd.get(name + ".bias"))


def _mlp(sd, p, x):
    h = _lin(sd, p + "mlp.fc1", x)
    return _lin(sd, p + "mlp.fc2", h * torch.sigmoid(1.702 * h))  # quick_gelu


def _attn(sd, p, x, heads, causal):
    b, n, d = x.shape
    hd = d // heads
    q = _lin(sd, p + "self_attn.q_proj", x).view(b, n, heads, hd).transpose(1, 2) * hd ** -0.5
    k = _lin(sd, p + "self_attn.k_proj", x).view(b, n, heads, hd).transpose(1, 2)
    v = _lin(sd, p + "self_attn.v_proj", x).view(b, n, heads, hd).transpose(1, 2)
    w = q @ k.transpose(-1, -2)
    if causal:
        w = w.masked_fill(torch.ones(n, n, dtype=torch.bool).triu(1), float("-inf"))
    o = (w.softmax(-1) @ v).transpose(1, 2).reshape(b, n, d)
    return _lin(sd, p + "self_attn.out_proj", o)


def _block(sd, p, x, heads, causal):
    x = x + _attn(sd, p, _ln(sd, p + "layer_norm1", x), heads, causal)
    return x + _mlp(sd, p + "", _ln(sd, p + "layer_norm2", x))


def text_features(sd, config, ids: torch.Tensor, eos: int, long: bool) -> torch.Tensor:
    """Upstream get_text_features(walk_short_pos=not long), normalised; ``ids`` padded as upstream pads."""
    n = ids.shape[1]
    e = "text_model.embeddings."
    x = sd[e + "token_embedding.weight"][ids]
    if long:
        pos = torch.arange(n)
        mask1 = (pos < SPLIT).float()[:, None]
        x = x + sd[e + "position_embedding_ori.weight"][:n] * mask1 + sd[e + "position_embedding_res.weight"][:n] * (1 - mask1)
    else:
        x = x + sd[e + "position_embedding.weight"][:n]
    cfg = config.text_config
    for i in range(cfg.num_hidden_layers):
        x = _block(sd, f"text_model.encoder.layers.{i}.", x, cfg.num_attention_heads, causal=True)
    x = _ln(sd, "text_model.final_layer_norm", x)
    pooled = x[torch.arange(x.shape[0]), (ids == eos).int().argmax(-1)]
    proj = "text_filip_projection.weight" if long else "text_projection.weight"
    return F.normalize(pooled @ sd[proj].t(), dim=-1)


def image_features(sd, config, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(global features (B, P), dense grid (B, P, G, G)) as upstream computes them; both unnormalised grid."""
    cfg = config.vision_config
    e = "vision_model.embeddings."
    x = F.conv2d(pixels, sd[e + "patch_embedding.weight"], stride=cfg.patch_size).flatten(2).transpose(1, 2)
    cls = sd[e + "class_embedding"].expand(x.shape[0], 1, -1)
    x = torch.cat([cls, x], dim=1) + sd[e + "position_embedding.weight"]
    x = _ln(sd, "vision_model.pre_layrnorm", x)
    layers = cfg.num_hidden_layers
    for i in range(layers - 1):
        x = _block(sd, f"vision_model.encoder.layers.{i}.", x, cfg.num_attention_heads, causal=False)
    last = f"vision_model.encoder.layers.{layers - 1}."
    out = _block(sd, last, x, cfg.num_attention_heads, causal=False)
    glob = F.normalize(_ln(sd, "vision_model.post_layernorm", out[:, 0]) @ sd["visual_projection.weight"].t(), dim=-1)
    # forward_without_attn on hidden_states[-2] (the last block's input)
    h = x + _lin(sd, last + "self_attn.out_proj", _lin(sd, last + "self_attn.v_proj", _ln(sd, last + "layer_norm1", x)))
    h = h + _mlp(sd, last, _ln(sd, last + "layer_norm2", h))
    d = _ln(sd, "vision_model.post_layernorm", h[:, 1:]) @ sd["visual_projection.weight"].t()
    b, n, p = d.shape
    g = int(math.sqrt(n))
    return glob, d.view(b, g, g, p).permute(0, 3, 1, 2)


def region_features(grid: torch.Tensor, boxes: list[list[float]]) -> torch.Tensor:
    """Upstream RoI pooling: normalised xyxy boxes of image 0.. scaled to grid units, roi_align at scale 1."""
    g_h, g_w = grid.shape[-2:]
    rows = torch.tensor([[b[0], b[1] * g_w, b[2] * g_h, b[3] * g_w, b[4] * g_h] for b in boxes], dtype=torch.float32)
    return F.normalize(roi_align(grid.float(), rows, (1, 1), 1.0, -1, True)[..., 0, 0], dim=-1)
