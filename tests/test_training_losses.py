"""Loss values against hand-computed small cases."""
import math

import torch

from training.losses import LossWeights, clip_loss, gather_with_grad, global_loss, hard_loss, regional_loss, scale_of


def test_clip_loss_matches_hand_computation_for_orthogonal_pairs():
    a = torch.eye(2)
    scale = torch.tensor(1.0)
    # logits = I: each row's CE = -log(e / (e + 1)) = log(1 + e^-1); both directions the same.
    assert torch.allclose(clip_loss(a, a, scale), torch.tensor(math.log(1 + math.exp(-1))), atol=1e-6)


def test_clip_loss_asymmetric_case():
    a = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    b = torch.tensor([[1.0, 0.0], [1.0, 0.0]])  # both texts point at image 0
    logits = torch.tensor([[1.0, 1.0], [0.0, 0.0]])  # a @ b.T
    row = (-torch.log_softmax(logits, 1)[0, 0] - torch.log_softmax(logits, 1)[1, 1]) / 2
    col = (-torch.log_softmax(logits.t(), 1)[0, 0] - torch.log_softmax(logits.t(), 1)[1, 1]) / 2
    assert torch.allclose(clip_loss(a, b, torch.tensor(1.0)), (row + col) / 2, atol=1e-6)
    # hand values: rows give log 2 and log 2; columns give -log(e/(e+1)) and -log(1/(e+1))
    expected = (2 * math.log(2) + math.log(1 + math.exp(-1)) + math.log(1 + math.e)) / 4
    assert abs(clip_loss(a, b, torch.tensor(1.0)).item() - expected) < 1e-6


def test_global_loss_is_long_plus_short_with_exp_scale():
    torch.manual_seed(0)
    img, lng, sht = (torch.nn.functional.normalize(torch.randn(4, 8), dim=-1) for _ in range(3))
    log_scale = torch.tensor(math.log(10.0))
    expected = clip_loss(img, lng, torch.tensor(10.0)) + clip_loss(img, sht, torch.tensor(10.0))
    assert torch.allclose(global_loss(img, lng, sht, log_scale), expected, atol=1e-6)


def test_temperatures_are_unclamped_as_upstream_unless_a_cap_is_set():
    torch.manual_seed(0)
    img, txt = (torch.nn.functional.normalize(torch.randn(4, 8), dim=-1) for _ in range(2))
    log_scale = torch.tensor(math.log(150.0), requires_grad=True)
    free = global_loss(img, txt, txt, log_scale)
    assert torch.allclose(free, 2 * clip_loss(img, txt, torch.tensor(150.0)), atol=1e-5)
    free.backward()
    assert log_scale.grad.abs().item() > 0  # above 100 the temperature still learns
    capped = global_loss(img, txt, txt, log_scale, max_scale=100.0)
    assert torch.allclose(capped, 2 * clip_loss(img, txt, torch.tensor(100.0)), atol=1e-5)
    assert not torch.allclose(capped, free, atol=1e-3)
    assert scale_of(torch.tensor(math.log(100.0) + 1e-4)).item() > 100.0  # OpenAI CLIP's 4.6052 stays trainable


def test_hard_loss_eleven_way_softmax_positive_first():
    region = torch.tensor([[1.0, 0.0]])
    texts = torch.tensor([[[1.0, 0.0]] + [[0.0, 1.0]] * 10])  # positive then 10 orthogonal negatives
    loss = hard_loss(region, texts, torch.tensor(0.0))  # scale 1
    assert abs(loss.item() - (-math.log(math.e / (math.e + 10)))) < 1e-6
    swapped = torch.tensor([[[0.0, 1.0]] + [[1.0, 0.0]] + [[0.0, 1.0]] * 9])  # a negative matches better
    assert hard_loss(region, swapped, torch.tensor(0.0)).item() > loss.item()


def test_empty_terms_are_zero_and_keep_the_graph():
    log_scale = torch.tensor(2.0, requires_grad=True)
    feats = torch.zeros(0, 4, requires_grad=True)
    h = hard_loss(feats, torch.zeros(0, 11, 4), log_scale)
    r = regional_loss(feats, torch.zeros(0, 4), log_scale)
    assert h.item() == 0.0 and r.item() == 0.0
    (h + r).backward()
    assert log_scale.grad is not None and log_scale.grad.item() == 0.0


def test_regional_loss_symmetric_contrastive():
    region = torch.eye(3)
    assert torch.allclose(regional_loss(region, region, torch.tensor(0.0)), clip_loss(region, region, torch.tensor(1.0)))


def test_gather_is_identity_without_process_group():
    x = torch.randn(3, 2)
    assert gather_with_grad(x) is x


def test_stage2_weights_default_to_paper_values():
    w = LossWeights()
    assert (w.w_global, w.w_regional, w.w_hard, w.max_logit_scale) == (1.0, 0.1, 0.5, 0.0)
