"""FG-CLIP losses: global (long + short) InfoNCE with cross-rank gather, regional contrastive, hard-negative softmax."""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn.functional as F



def scale_of(log_scale: torch.Tensor, max_scale: float = 0.0) -> torch.Tensor:
    """exp of a learnable log temperature; unclamped as in upstream FG-CLIP unless ``max_scale`` > 0.

    (A clamp at 100 would freeze OpenAI CLIP's temperature: its ``logit_scale`` is 4.6052 and
    exp(4.6052) is just above 100, where the clamp passes no gradient.)
    """
    scale = log_scale.exp()
    return scale.clamp(max=max_scale) if max_scale > 0 else scale


class _GatherWithGrad(torch.autograd.Function):
    """all_gather whose backward sums every rank's gradient for this rank's rows (equal sizes per rank)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        ctx.rank, ctx.rows = dist.get_rank(), x.shape[0]
        parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, x.contiguous())
        return torch.cat(parts, dim=0)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        grad = grad.contiguous().clone()
        dist.all_reduce(grad)
        return grad[ctx.rank * ctx.rows:(ctx.rank + 1) * ctx.rows]


def gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    """Concatenate ``x`` from all ranks along dim 0, keeping the gradient path (identity when not distributed)."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return x
    return _GatherWithGrad.apply(x)


def clip_loss(a: torch.Tensor, b: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Symmetric InfoNCE between row-aligned normalised features ``a`` and ``b`` (0 with the graph kept if empty)."""
    if a.shape[0] == 0:
        return a.sum() * 0 + b.sum() * 0 + scale * 0
    logits = scale * a.float() @ b.float().t()
    labels = torch.arange(a.shape[0], device=a.device)
    return (F.cross_entropy(logits, labels) + F.cross_entropy(logits.t(), labels)) / 2


def global_loss(image: torch.Tensor, long_text: torch.Tensor, short_text: torch.Tensor,
                log_scale: torch.Tensor, max_scale: float = 0.0) -> torch.Tensor:
    """L_global = InfoNCE(image, long) + InfoNCE(image, short) over the batch gathered from all ranks."""
    s = scale_of(log_scale, max_scale)
    img, lng, sht = gather_with_grad(image), gather_with_grad(long_text), gather_with_grad(short_text)
    return clip_loss(img, lng, s) + clip_loss(img, sht, s)


def regional_loss(region: torch.Tensor, region_text: torch.Tensor, log_scale: torch.Tensor,
                  max_scale: float = 0.0) -> torch.Tensor:
    """L_regional: symmetric InfoNCE between region features and their texts, on this rank's regions."""
    return clip_loss(region, region_text, scale_of(log_scale, max_scale))


def hard_loss(hard_region: torch.Tensor, hard_text: torch.Tensor, log_scale: torch.Tensor,
              max_scale: float = 0.0) -> torch.Tensor:
    """L_hard: per region an 11-way softmax over [positive, 10 negatives]; the positive is index 0."""
    s = scale_of(log_scale, max_scale)
    if hard_region.shape[0] == 0:
        return hard_region.sum() * 0 + hard_text.sum() * 0 + s * 0
    logits = s * torch.einsum("hd,hkd->hk", hard_region.float(), hard_text.float())
    labels = torch.zeros(hard_region.shape[0], dtype=torch.long, device=hard_region.device)
    return F.cross_entropy(logits, labels)


@dataclass
class LossWeights:
    w_global: float = 1.0
    w_regional: float = 0.1
    w_hard: float = 0.5
    max_logit_scale: float = 0.0  # 0: temperatures unclamped, as upstream


def fgclip_loss(feats: dict[str, torch.Tensor], model: torch.nn.Module, weights: LossWeights) -> dict[str, torch.Tensor]:
    """All loss terms plus their weighted sum under key ``loss``; ``model`` is the unwrapped FGCLIP."""
    cap = weights.max_logit_scale
    out = {"global": global_loss(feats["image"], feats["long_text"], feats["short_text"], model.clip.logit_scale, cap)}
    total = weights.w_global * out["global"]
    if "region" in feats:
        out["regional"] = regional_loss(feats["region"], feats["region_text"], model.regional_logit_scale, cap)
        out["hard"] = hard_loss(feats["hard_region"], feats["hard_text"], model.hard_logit_scale, cap)
        total = total + weights.w_regional * out["regional"] + weights.w_hard * out["hard"]
    out["loss"] = total
    return out
