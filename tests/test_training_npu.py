"""The Ascend NPU path (torch_npu, npu:N, HCCL, bf16, HF32, RoIAlign fallback) driven by a fake torch_npu."""
import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_npu_set_up_as_ascend_users_expect_through_a_fake_torch_npu():
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([ROOT, os.path.join(ROOT, "tests")]), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "tests", "fake_npu.py")], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    assert got["device"] == "npu:1" and got["set_device"] == ["set_device(npu:1)"]  # LOCAL_RANK 1 -> npu:1
    assert got["backend"] == ["hccl"]
    assert got["fast_matmul"] == "hf32" and got["matmul_hf32"] and got["conv_hf32"]  # where CUDA gets TF32
    assert got["autocast"] == ["npu", "torch.bfloat16"]
    assert got["roi_auto"] == got["roi_run"] == "torch"  # torchvision has no NPU kernel: plain torch ops
    assert "bf16 autocast on npu" in got["start_line"]


def test_npu_without_torch_npu_fails_with_the_install_hint(monkeypatch):
    from training.distributed import resolve_device

    monkeypatch.setitem(sys.modules, "torch_npu", None)  # import torch_npu -> ImportError
    with pytest.raises(RuntimeError, match="pip install torch-npu"):
        resolve_device("npu")


def test_cuda_gets_tf32_and_cpu_nothing():
    import torch

    from training.distributed import enable_fast_matmul

    # torch's cuBLAS flags are properties of a module object that pytest's monkeypatch cannot restore
    before = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    try:
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
        assert enable_fast_matmul(torch.device("cpu")) == "fp32" and not torch.backends.cuda.matmul.allow_tf32
        assert enable_fast_matmul(torch.device("cuda", 0)) == "tf32"
        assert torch.backends.cuda.matmul.allow_tf32 and torch.backends.cudnn.allow_tf32
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = before
