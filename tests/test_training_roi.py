"""RoIAlign in plain torch ops equals torchvision's kernel (forward and gradients) and is picked where it has none."""
import pytest
import torch
from torchvision.ops import roi_align as tv_roi_align

from training.config import ConfigError
from training.model import FGCLIP
from training.roi import resolve_impl, roi_align, roi_align_torch, torchvision_has_kernel
from training.train import resolve_roi


def _boxes(n: int, images: int, seed: int, scale: float = 1.0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(n, 2, generator=g) * 1.2 - 0.1  # some start outside the image
    wh = torch.rand(n, 2, generator=g) * 0.7 + 0.01
    idx = torch.randint(0, images, (n, 1), generator=g).float()
    boxes = torch.cat([idx, xy, xy + wh], 1)
    boxes[0, 1:] = torch.tensor([0.0, 0.0, 1.0, 1.0])  # the whole image
    boxes[1, 1:] = torch.tensor([0.9, 0.9, 1.0, 1.0])  # a corner cell (last-row/column rule)
    boxes[:, 1:] *= scale
    return boxes


def _compare(dense, boxes, **kw):
    dense = dense.clone().requires_grad_(True)
    want = tv_roi_align(dense, boxes, **kw)
    upstream_grad = torch.randn_like(want)
    (g_want,) = torch.autograd.grad((want * upstream_grad).sum(), dense)
    got = roi_align_torch(dense, boxes, **kw)
    (g_got,) = torch.autograd.grad((got * upstream_grad).sum(), dense)
    return (got - want).abs().max().item(), (g_got - g_want).abs().max().item()


@pytest.mark.parametrize("grid", [14, 24, 4])
def test_torch_roi_align_equals_torchvision_with_the_projects_settings_forward_and_gradients(grid):
    torch.manual_seed(grid)
    dense = torch.randn(3, 32, grid, grid)  # (B, P, G, G) float32, as region_features passes it
    boxes = _boxes(17, 3, seed=grid)
    fwd, bwd = _compare(dense, boxes, output_size=1, spatial_scale=float(grid), sampling_ratio=-1, aligned=True)
    assert fwd < 1e-5 and bwd < 1e-5


@pytest.mark.parametrize("aligned", [True, False])
@pytest.mark.parametrize("sampling_ratio", [-1, 2])
def test_torch_roi_align_equals_torchvision_for_other_sizes_and_pixel_boxes(aligned, sampling_ratio):
    torch.manual_seed(1)
    dense = torch.randn(2, 5, 9, 11, dtype=torch.float64)
    boxes = _boxes(9, 2, seed=5, scale=10.0).double()
    fwd, bwd = _compare(dense, boxes, output_size=(2, 3), spatial_scale=0.9, sampling_ratio=sampling_ratio,
                        aligned=aligned)
    assert fwd < 1e-12 and bwd < 1e-12


def test_model_region_features_are_the_same_with_either_implementation():
    dense = torch.randn(2, 16, 14, 14)
    boxes = _boxes(6, 2, seed=3)
    a = FGCLIP.region_features(dense, boxes, "torchvision")
    b = FGCLIP.region_features(dense, boxes, "torch")
    assert torch.allclose(a, b, atol=1e-6)
    assert FGCLIP.region_features(dense, torch.zeros(0, 5), "torch").shape == (0, 16)


def test_auto_uses_torchvision_where_it_has_a_kernel_and_torch_ops_elsewhere():
    assert torchvision_has_kernel("cpu") and not torchvision_has_kernel("npu")
    assert resolve_impl("auto", "cpu") == "torchvision"
    assert resolve_impl("auto", "npu") == "torch"  # Ascend: torchvision registers no PrivateUse1 kernel
    assert resolve_impl("torch", "cpu") == "torch"
    dense, boxes = torch.randn(1, 4, 6, 6), _boxes(3, 1, seed=0)
    assert torch.equal(roi_align(dense, boxes, 1, 6.0, -1, True, impl="auto"), tv_roi_align(dense, boxes, 1, 6.0, -1, True))
    with pytest.raises(ValueError, match="one of"):
        resolve_impl("cuda-kernel", "cpu")


def test_asking_for_torchvision_where_it_has_no_kernel_fails_fast_with_the_fix():
    with pytest.raises(ConfigError, match="--roi-align torch or auto"):
        resolve_roi("torchvision", "npu")
    assert resolve_roi("auto", "npu") == "torch"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_torch_roi_align_equals_torchvision_on_cuda():
    torch.manual_seed(0)
    dense = torch.randn(4, 64, 14, 14, device="cuda")
    boxes = _boxes(40, 4, seed=2).cuda()
    fwd, bwd = _compare(dense, boxes, output_size=1, spatial_scale=14.0, sampling_ratio=-1, aligned=True)
    assert fwd < 1e-5 and bwd < 1e-5
    assert resolve_impl("auto", "cuda") == "torchvision"
