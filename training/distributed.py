"""Process-group setup for torchrun launches: gloo on CPU, nccl on CUDA, hccl on Ascend NPU."""
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
            import torch_npu  # noqa: F401  (registers the npu device)
        except ImportError as exc:
            raise RuntimeError("--device npu needs torch_npu (pip install torch-npu matching your torch/CANN)") from exc
    elif kind == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("--device cuda but no CUDA GPU is visible; use --device cpu or check CUDA_VISIBLE_DEVICES")
    elif kind not in BACKENDS:
        raise RuntimeError(f"--device must be one of {sorted(BACKENDS)}, got {kind!r}")


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
        getattr(torch, kind).set_device(device)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(backend=BACKENDS[kind])
    return DistInfo(rank, world, local_rank, device)


def cleanup_distributed() -> None:
    """Leave the process group if this process joined one."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
