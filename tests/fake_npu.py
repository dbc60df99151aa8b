"""TEST DOUBLE: a fake ``torch_npu`` (Ascend) for driving the NPU code path on a CPU machine.

Run as a script (a fresh process: like the real ``torch_npu`` it renames torch's PrivateUse1 backend to
``npu``, which cannot be undone): installs the fake in ``sys.modules``, then goes through
``training.distributed`` / ``training.roi`` / ``training.train`` as ``finehard train --device npu``
under torchrun would (LOCAL_RANK 1 of 2) and prints what each did as one json line.
"""
from __future__ import annotations

import importlib.machinery
import json
import os
import sys
import types

import torch


class _Flags:
    def __init__(self) -> None:
        self.allow_hf32 = False


class FakeNpu(types.ModuleType):
    """``torch.npu`` as far as this project uses it: availability, set_device, HF32 switches."""

    def __init__(self) -> None:
        super().__init__("torch.npu")
        self.calls: list[str] = []
        self.matmul, self.conv = _Flags(), _Flags()

    def is_available(self) -> bool:
        return True

    def device_count(self) -> int:
        return 8

    def set_device(self, device) -> None:
        self.calls.append(f"set_device({device})")

    def current_device(self) -> int:
        return 0

    def get_amp_supported_dtype(self) -> list:
        return [torch.float16, torch.bfloat16]

    def is_bf16_supported(self) -> bool:
        return True


def install() -> FakeNpu:
    fake = FakeNpu()
    module = types.ModuleType("torch_npu")
    module.__spec__ = importlib.machinery.ModuleSpec("torch_npu", None)
    module.npu = fake

    def npu_fusion_attention(*args, **kwargs):  # transformers imports it when it sees torch_npu; never called here
        raise NotImplementedError("fake torch_npu")

    module.npu_fusion_attention = npu_fusion_attention
    sys.modules["torch_npu"] = module
    if torch._C._get_privateuse1_backend_name() != "npu":
        torch.utils.rename_privateuse1_backend("npu")
    torch._register_device_module("npu", fake)  # as torch_npu does: torch.npu
    return fake


def main() -> None:
    fake = install()
    import torch.distributed as dist

    from training import distributed
    from training.roi import resolve_impl
    from training.train import autocast_for, resolve_roi, start_line
    from training.config import TrainConfig

    groups: list[str] = []
    dist.init_process_group = lambda backend=None, **kw: groups.append(backend)  # no HCCL here: record the call
    dist.is_initialized = lambda: False
    os.environ.update(WORLD_SIZE="2", RANK="1", LOCAL_RANK="1")
    info = distributed.init_distributed("npu")
    fast = distributed.enable_fast_matmul(info.device)
    cast = autocast_for(info.device, "auto")
    print(json.dumps({
        "device": str(info.device), "set_device": fake.calls, "backend": groups, "fast_matmul": fast,
        "matmul_hf32": fake.matmul.allow_hf32, "conv_hf32": fake.conv.allow_hf32,
        "autocast": [getattr(cast, "device", None), str(getattr(cast, "fast_dtype", None))],
        "roi_auto": resolve_impl("auto", info.device.type), "roi_run": resolve_roi("auto", info.device.type),
        "start_line": start_line(TrainConfig(stage=2), info, None),
    }))


if __name__ == "__main__":
    main()
