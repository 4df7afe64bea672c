"""Loss unit tests with hand-computed values."""

import math

import pytest
import torch

from pcvos.model.network import aggregate
from pcvos.train.losses import BootstrappedCE, LossConfig, clip_dice_loss, compute_losses, iou_per_object
from pcvos.train.wrapper import aggregate_logits, read_full


def test_bootstrap_schedule():
    ce = BootstrappedCE(start_warm=10, end_warm=20, top_p=0.15)
    assert ce.p_at(0) == 1.0 and ce.p_at(9) == 1.0
    assert ce.p_at(10) == pytest.approx(1.0)
    assert ce.p_at(15) == pytest.approx(0.15 + 0.85 * 0.5)
    assert ce.p_at(20) == pytest.approx(0.15)
    assert ce.p_at(10**6) == pytest.approx(0.15)


def test_bootstrapped_ce_values():
    # 4 pixels, 2 classes; logits chosen so the per-pixel losses are known
    logits = torch.zeros(1, 2, 1, 4)
    logits[0, 1] = torch.tensor([0.0, math.log(3), -math.log(3), 10.0])
    target = torch.tensor([[[1, 1, 1, 0]]])
    # per-pixel CE: log 2, log(4/3), log 4, log(1 + e^10) - 0 ... = softplus(10)
    per = torch.tensor([math.log(2), math.log(4 / 3), math.log(4), math.log1p(math.exp(10))])
    ce = BootstrappedCE(start_warm=5, end_warm=5, top_p=0.5)
    loss, p = ce(logits, target, it=0)
    assert p == 1.0 and loss.item() == pytest.approx(per.mean().item(), rel=1e-5)
    loss, p = ce(logits, target, it=5)  # hardest half: the 10-logit pixel and log 4
    assert p == 0.5 and loss.item() == pytest.approx((per[3] + per[2]).item() / 2, rel=1e-5)


def test_clip_dice_hand_computed():
    # one sample, two objects, a clip of 2 frames of 1x2 pixels
    probs = torch.tensor(
        [[[[[1.0, 0.0]], [[0.5, 0.5]]], [[[0.0, 0.0]], [[0.0, 0.0]]]]]
    )  # (B=1, K=2, L=2, 1, 2)
    gt = torch.tensor([[[[[1.0, 0.0]], [[1.0, 0.0]]], [[[0.0, 0.0]], [[0.0, 0.0]]]]])
    # object 1: inter = 1 + 0.5 = 1.5, sums = 2 + 2 -> dice = (3 + s) / (4 + s); object 2 (absent,
    # predicted absent): (0 + s) / (0 + s) = 1, no loss
    assert clip_dice_loss(probs, gt, smooth=1e-12).item() == pytest.approx(0.25, abs=1e-6)
    assert clip_dice_loss(probs, gt, smooth=1.0).item() == pytest.approx(1 - 4 / 5, abs=1e-6)
    valid = torch.tensor([[True, False]])
    assert clip_dice_loss(probs, gt, valid, smooth=1e-12).item() == pytest.approx(0.25, abs=1e-6)
    # batch mean
    p2 = torch.cat([probs, torch.zeros_like(probs)])
    g2 = torch.cat([gt, gt])
    v2 = torch.tensor([[True, False], [True, False]])
    # second sample predicts nothing: object 1 dice = (0 + 1) / (0 + 2 + 1)
    assert clip_dice_loss(p2, g2, v2, smooth=1.0).item() == pytest.approx(
        ((1 - 4 / 5) + (1 - 1 / 3)) / 2, abs=1e-6
    )


def test_aggregate_logits_matches_network_aggregate():
    torch.manual_seed(0)
    obj = torch.randn(3, 2, 5, 5)
    a = torch.softmax(aggregate_logits(obj, dim=0), dim=0)
    b = aggregate(torch.sigmoid(obj), dim=0)
    assert torch.allclose(a, b, atol=1e-6)


def test_read_full_is_softmax_over_memory():
    torch.manual_seed(0)
    mk, q, mv = torch.randn(1, 4, 6), torch.randn(1, 4, 3), torch.randn(1, 2, 6)
    out = read_full(mk, mv, q)
    for j in range(3):
        s = torch.stack([(2 * mk[0, :, i] @ q[0, :, j] - mk[0, :, i] @ mk[0, :, i]) / 2 for i in range(6)])
        w = torch.softmax(s, 0)
        assert torch.allclose(out[0, :, j], (mv[0] * w).sum(1), atol=1e-5)


def test_compute_losses_total_is_sum(random_loss_inputs):
    torch.manual_seed(0)
    b, f, k, h, w = 2, 4, 2, 6, 6
    out, batch = random_loss_inputs(b, f, k, h, w)
    logits, labels = out["logits"], batch["labels"]
    res = compute_losses(out, batch, 0, LossConfig())
    assert res["total"].item() == pytest.approx(res["image"].item() + res["clip"].item(), rel=1e-6)
    exp_img = sum(torch.nn.functional.cross_entropy(logits[:, i], labels[:, i + 1]) for i in range(f))
    assert res["image"].item() == pytest.approx(exp_img.item(), rel=1e-5)
    off = compute_losses(out, batch, 0, LossConfig(clip_weight=0.0))
    assert off["total"].item() == pytest.approx(res["image"].item(), rel=1e-6)


def test_iou_per_object():
    pred = torch.tensor([[[1, 1, 0, 0]]])
    gt = torch.tensor([[[1, 0, 0, 0]]])
    assert iou_per_object(pred, gt, torch.tensor([[True]])).item() == pytest.approx(0.5)


def test_training_forward_matches_inference_engine():
    """With BatchNorm in eval mode, a full-softmax read equals the engine's top-k read when k covers
    the whole memory: the training forward must then reproduce per-clip inference (clips of 3, the
    last frame of clip 1 as memory, ICR on, PMM off)."""
    from pcvos import PCVOS, PCVOSConfig
    from pcvos.inference.engine import InferenceConfig, InferenceCore
    from pcvos.train.wrapper import PerClipTrainer

    torch.manual_seed(0)
    net = PCVOS(
        PCVOSConfig(
            backbone="efficientnet-lite0",
            key_dim=16,
            value_dim=32,
            thin_dim=32,
            local_key_dim=32,
            decoder_widths=(32, 16, 16),
        )
    ).eval()
    frames = torch.rand(1, 7, 3, 64, 64)
    masks = torch.zeros(1, 7, 2, 64, 64)
    masks[0, 0, 0, 10:30, 10:30] = 1
    masks[0, 0, 1, 40:60, 30:50] = 1
    valid = torch.ones(1, 2, dtype=torch.bool)
    tr = PerClipTrainer(net, clip_len=3).eval()
    with torch.no_grad():
        out = tr(frames, masks, valid)
    core = InferenceCore(net, InferenceConfig(clip_length=3, pmm_segment=None, refine=True, top_k=10**6))
    imgs = net.normalize(frames[0])
    core.process_clip([0], imgs[:1], (masks[0, 0], [1, 2]))
    p1 = core.process_clip([1, 2, 3], imgs[1:4])
    p2 = core.process_clip([4, 5, 6], imgs[4:7])
    ref = torch.cat([p1, p2], 1).transpose(0, 1)  # (6, 1 + K, H, W)
    assert torch.allclose(out["probs"][0], ref, atol=1e-4), (out["probs"][0] - ref).abs().max()
