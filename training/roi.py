"""RoIAlign on any device: torchvision's kernel where the device has one, else the same sampling in plain torch ops.

torchvision registers ``roi_align`` kernels for CPU, CUDA and MPS only; on an Ascend NPU (``torch_npu``)
there is none unless ``torchvision_npu`` adds it. :func:`roi_align_torch` computes what torchvision's
kernel computes (the same sample points, bilinear weights, bounds rule and averaging), as matrix
products, so it runs wherever ``torch`` runs and autograd gives the gradient of the features (as
torchvision, none for the boxes). :func:`roi_align` picks one by ``impl``: ``torchvision``, ``torch``
or ``auto`` (torchvision's kernel where the device has one, else the torch one).

How the torch version works: the bilinear value at (y, x) is a product of a weight over rows and
one over columns, so the average of a bin's samples is ``sum_h sum_w wy[h] wx[w] f[h, w] / count``
with ``wy`` (``wx``) the summed row (column) weights of the bin's sample rows (columns). Each box's
``(bins, H*W)`` weight matrix is multiplied with its image's ``(H*W, C)`` features, batched per image.
"""
from __future__ import annotations

import torch

IMPLS = ("auto", "torchvision", "torch")
# device type -> the dispatch key torchvision's kernels register under (torch_npu's device is PrivateUse1)
DISPATCH_KEYS = {"cpu": "CPU", "cuda": "CUDA", "mps": "MPS", "xpu": "XPU", "npu": "PrivateUse1"}


def torchvision_has_kernel(device_type: str) -> bool:
    """Whether ``torchvision::roi_align`` has a kernel for ``device_type`` in this process."""
    key = DISPATCH_KEYS.get(device_type, "PrivateUse1")
    try:
        import torchvision.ops  # noqa: F401  (registers torchvision::roi_align)

        return bool(torch._C._dispatch_has_kernel_for_dispatch_key("torchvision::roi_align", key))
    except (ImportError, RuntimeError, AttributeError):
        return False


def resolve_impl(impl: str, device_type: str) -> str:
    """``torchvision`` or ``torch`` for ``impl`` on ``device_type`` (``auto``: torchvision where it has a kernel)."""
    if impl not in IMPLS:
        raise ValueError(f"roi_align implementation must be one of {IMPLS}, got {impl!r}")
    if impl == "auto":
        return "torchvision" if torchvision_has_kernel(device_type) else "torch"
    return impl


def _axis_weights(start: torch.Tensor, bin_size: torch.Tensor, grid: torch.Tensor, bins: int, size: int,
                  max_grid: int) -> torch.Tensor:
    """(N, bins, size): per box and bin, the summed linear-interpolation weights of its samples on one axis.

    The sample positions, the ``[-1, size]`` bounds (outside: the sample counts as 0), the clamp at 0
    and the last-row rule follow torchvision's ``bilinear_interpolate``.
    """
    n = start.shape[0]
    dev, dt = start.device, start.dtype
    b = torch.arange(bins, device=dev, dtype=dt).view(1, bins, 1)
    i = torch.arange(max_grid, device=dev, dtype=dt).view(1, 1, max_grid)
    g = grid.to(dt).view(n, 1, 1)
    pos = start.view(n, 1, 1) + b * bin_size.view(n, 1, 1) + (i + 0.5) * bin_size.view(n, 1, 1) / g.clamp(min=1)
    used = (i < g) & (pos >= -1.0) & (pos <= size)
    pos = pos.clamp(min=0)
    low = pos.floor().clamp(max=size - 1)
    at_end = low >= size - 1
    high = torch.where(at_end, low, low + 1)
    pos = torch.where(at_end, low, pos)
    frac = pos - low
    onehot = torch.arange(size, device=dev, dtype=dt).view(1, 1, 1, size)
    w = ((onehot == low.unsqueeze(-1)).to(dt) * (1 - frac).unsqueeze(-1)
         + (onehot == high.unsqueeze(-1)).to(dt) * frac.unsqueeze(-1))
    return (w * used.unsqueeze(-1).to(dt)).sum(dim=2)


def roi_align_torch(features: torch.Tensor, boxes: torch.Tensor, output_size: int | tuple[int, int],
                    spatial_scale: float = 1.0, sampling_ratio: int = -1, aligned: bool = False) -> torch.Tensor:
    """``torchvision.ops.roi_align`` (``boxes`` as a (K, 5) tensor: batch index, x1, y1, x2, y2) in plain torch ops."""
    ph, pw = (output_size, output_size) if isinstance(output_size, int) else output_size
    b, c, h, w = features.shape
    k = boxes.shape[0]
    if k == 0:
        return features.new_zeros((0, c, ph, pw))
    rois = boxes.detach().to(features.dtype)  # torchvision gives the boxes no gradient either
    offset = 0.5 if aligned else 0.0
    x1, y1 = rois[:, 1] * spatial_scale - offset, rois[:, 2] * spatial_scale - offset
    rw, rh = rois[:, 3] * spatial_scale - offset - x1, rois[:, 4] * spatial_scale - offset - y1
    if not aligned:
        rw, rh = rw.clamp(min=1.0), rh.clamp(min=1.0)
    bh, bw = rh / ph, rw / pw
    if sampling_ratio > 0:
        gh = gw = torch.full((k,), sampling_ratio, device=rois.device, dtype=torch.long)
    else:
        gh, gw = torch.ceil(rh / ph).clamp(min=0).long(), torch.ceil(rw / pw).clamp(min=0).long()
    max_h, max_w = max(1, int(gh.max())), max(1, int(gw.max()))
    wy = _axis_weights(y1, bh, gh, ph, h, max_h)  # (K, ph, H)
    wx = _axis_weights(x1, bw, gw, pw, w, max_w)  # (K, pw, W)
    count = (gh * gw).clamp(min=1).to(features.dtype).view(k, 1, 1, 1, 1)
    mats = (wy.view(k, ph, 1, h, 1) * wx.view(k, 1, pw, 1, w) / count).reshape(k, ph * pw, h * w)
    # batch the boxes per image: slot s of image i holds its s-th box
    idx = rois[:, 0].long()
    order = torch.argsort(idx, stable=True)
    sorted_idx = idx[order]
    first = torch.searchsorted(sorted_idx, sorted_idx, right=False)
    slot = torch.empty_like(idx)
    slot[order] = torch.arange(k, device=idx.device) - first
    slots = int(slot.max()) + 1
    padded = mats.new_zeros((b, slots, ph * pw, h * w))
    padded[idx, slot] = mats
    flat = features.reshape(b, c, h * w).transpose(1, 2)  # (B, H*W, C)
    out = torch.bmm(padded.reshape(b, slots * ph * pw, h * w), flat).reshape(b, slots, ph * pw, c)
    return out[idx, slot].transpose(1, 2).reshape(k, c, ph, pw)


def roi_align(features: torch.Tensor, boxes: torch.Tensor, output_size: int | tuple[int, int],
              spatial_scale: float = 1.0, sampling_ratio: int = -1, aligned: bool = False,
              impl: str = "auto") -> torch.Tensor:
    """RoIAlign by ``impl`` (see the module docstring); same arguments as ``torchvision.ops.roi_align``."""
    if resolve_impl(impl, features.device.type) == "torchvision":
        from torchvision.ops import roi_align as tv_roi_align

        return tv_roi_align(features, boxes, output_size, spatial_scale, sampling_ratio, aligned)
    return roi_align_torch(features, boxes, output_size, spatial_scale, sampling_ratio, aligned)
