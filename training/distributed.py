"""Devices and process groups for torchrun launches: gloo on CPU, nccl on CUDA, hccl on Ascend NPU.

An Ascend NPU is used as its users expect: ``import torch_npu`` registers the ``npu`` device and
``torch.npu``; each process takes ``npu:LOCAL_RANK`` (``torch.npu.set_device``) and joins an ``hccl``
group; bf16 autocast runs on it as on CUDA, and HF32 (``torch.npu.matmul.allow_hf32`` and
``torch.npu.conv.allow_hf32``) is enabled where CUDA gets TF32. Everything here reaches the device
through :func:`device_module` (``torch.cuda`` / ``torch.npu``), so a test can drive the NPU path
with a fake ``torch_npu`` module.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

BACKENDS = {"cpu": "gloo", "cuda": "nccl", "npu": "hccl"}


@dataclass
class DistInfo:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def resolve_device(kind: str) -> None:
    """Import accelerator support for ``kind`` and fail fast when it is absent."""
    if kind == "npu":
        try:
            import torch_npu  # noqa: F401  (registers the npu device and torch.npu)
        except ImportError as exc:
            raise RuntimeError("--device npu needs torch_npu (pip install torch-npu matching your torch/CANN)") from exc
        if not torch.npu.is_available():
            raise RuntimeError("--device npu but no Ascend NPU is visible; check the CANN driver and "
                               "ASCEND_RT_VISIBLE_DEVICES, or use --device cpu")
    elif kind == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("--device cuda but no CUDA GPU is visible; use --device cpu or check CUDA_VISIBLE_DEVICES")
    elif kind not in BACKENDS:
        raise RuntimeError(f"--device must be one of {sorted(BACKENDS)}, got {kind!r}")


def device_module(kind: str):
    """``torch.cuda`` or ``torch.npu`` (after :func:`resolve_device`); None on CPU."""
    return None if kind == "cpu" else getattr(torch, kind)


def enable_fast_matmul(device: torch.device) -> str:
    """TF32 on CUDA, HF32 on Ascend NPU (matmul and convolution, as upstream's ``--tf32 True``); says which."""
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        return "tf32"
    if device.type == "npu":
        npu = device_module("npu")
        npu.matmul.allow_hf32 = True
        npu.conv.allow_hf32 = True
        return "hf32"
    return "fp32"


def init_distributed(kind: str) -> DistInfo:
    """Join the torchrun process group when WORLD_SIZE > 1; pick this process's device."""
    resolve_device(kind)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if kind == "cpu":
        device = torch.device("cpu")
    else:
        device = torch.device(kind, local_rank)
        device_module(kind).set_device(device)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(backend=BACKENDS[kind])
    return DistInfo(rank, world, local_rank, device)


def cleanup_distributed() -> None:
    """Leave the process group if this process joined one."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
