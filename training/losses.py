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


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank_local_clip_loss(a: torch.Tensor, b: torch.Tensor, all_a: torch.Tensor, all_b: torch.Tensor,
                         scale: torch.Tensor, offset: int) -> torch.Tensor:
    """Symmetric InfoNCE of this rank's rows ``a``/``b`` against every rank's columns ``all_b``/``all_a``.

    Upstream FG-CLIP's scheme (``clip_loss`` in ``fgclip.py``): the (n, N) logits of the own rows only,
    labels ``offset + arange(n)`` (``offset`` = rank x n). The mean of this over the ranks is the
    full (N, N) :func:`clip_loss`; with the gather's summed backward and DDP's gradient average the
    gradients are the same too, for n/N of the logit memory.
    """
    labels = torch.arange(a.shape[0], device=a.device) + offset
    a2b = scale * a.float() @ all_b.float().t()
    b2a = scale * b.float() @ all_a.float().t()
    return (F.cross_entropy(a2b, labels) + F.cross_entropy(b2a, labels)) / 2


def global_loss(image: torch.Tensor, long_text: torch.Tensor, short_text: torch.Tensor,
                log_scale: torch.Tensor, max_scale: float = 0.0, rank_local: bool = True) -> torch.Tensor:
    """L_global = InfoNCE(image, long) + InfoNCE(image, short) against the batch gathered from all ranks.

    With several ranks and ``rank_local`` (default, upstream's scheme) each rank scores its own rows
    against all gathered columns and returns its share: the global loss is the mean over ranks (see
    :func:`rank_local_clip_loss`). ``rank_local=False`` builds the full (N, N) matrices on every rank
    and returns the global loss itself (same gradients, ``world`` times the logit memory).
    """
    s = scale_of(log_scale, max_scale)
    img, lng, sht = gather_with_grad(image), gather_with_grad(long_text), gather_with_grad(short_text)
    if not (rank_local and _distributed()):
        return clip_loss(img, lng, s) + clip_loss(img, sht, s)
    if image.shape[0] == 0:
        return clip_loss(image, long_text, s) + clip_loss(image, short_text, s)
    offset = dist.get_rank() * image.shape[0]
    return (rank_local_clip_loss(image, long_text, img, lng, s, offset)
            + rank_local_clip_loss(image, short_text, img, sht, s, offset))


def mean_over_ranks(value: torch.Tensor) -> torch.Tensor:
    """The mean of a detached scalar over all ranks (itself with one rank): for reporting rank-local shares."""
    if not _distributed():
        return value.detach()
    v = value.detach().float().clone()
    dist.all_reduce(v)
    return v / dist.get_world_size()


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
    rank_local: bool = True  # global loss: own rows vs gathered columns (upstream); False: full matrix per rank


def fgclip_loss(feats: dict[str, torch.Tensor], model: torch.nn.Module, weights: LossWeights) -> dict[str, torch.Tensor]:
    """All loss terms plus their weighted sum under key ``loss``; ``model`` is the unwrapped FGCLIP."""
    cap = weights.max_logit_scale
    out = {"global": global_loss(feats["image"], feats["long_text"], feats["short_text"], model.clip.logit_scale, cap,
                                 weights.rank_local)}
    total = weights.w_global * out["global"]
    if "region" in feats:
        out["regional"] = regional_loss(feats["region"], feats["region_text"], model.regional_logit_scale, cap)
        out["hard"] = hard_loss(feats["hard_region"], feats["hard_text"], model.hard_logit_scale, cap)
        total = total + weights.w_regional * out["regional"] + weights.w_hard * out["hard"]
    out["loss"] = total
    return out
