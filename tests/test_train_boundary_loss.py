"""The boundary-weighted cross-entropy (loss.boundary_weight / loss.boundary_radius): where the band
lies, what the weight does to the loss, its hard-pixel choice and its gradients, and the config."""

import math
import re
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from pcvos.cli import main as pcvos_main
from pcvos.data.train_datasets import read_label_mask
from pcvos.train.config import ConfigError, load_config
from pcvos.train.losses import BootstrappedCE, LossConfig, boundary_band, compute_losses

ROOT = Path(__file__).resolve().parents[1]
KITE = ROOT / "tests" / "data" / "export_masks" / "kite-walk-00020.png"  # a DAVIS 2016 annotation


def _band_by_hand(labels: np.ndarray, r: int) -> np.ndarray:
    """The definition, pixel by pixel: more than one label in the (2r+1)² window (cut at the border)."""
    h, w = labels.shape
    out = np.zeros((h, w), bool)
    for y in range(h):
        for x in range(w):
            win = labels[max(0, y - r) : y + r + 1, max(0, x - r) : x + r + 1]
            out[y, x] = len(np.unique(win)) > 1
    return out


def test_band_of_a_straight_edge_is_r_pixels_either_side():
    labels = torch.zeros(6, 10, dtype=torch.long)
    labels[:, 5:] = 1  # edge between columns 4 and 5
    for r, cols in ((1, [4, 5]), (2, [3, 4, 5, 6]), (3, [2, 3, 4, 5, 6, 7])):
        band = boundary_band(labels, r)
        expected = torch.zeros(6, 10, dtype=torch.bool)
        expected[:, cols] = True
        assert torch.equal(band, expected), r


def test_band_matches_its_definition_for_several_objects_and_frames():
    a = np.zeros((14, 16), np.int64)
    a[3:9, 2:8] = 1
    a[3:9, 8:12] = 2  # touches object 1: the edge between two objects is an edge too
    a[11, 1:15] = 3  # a one-pixel line
    b = np.zeros((14, 16), np.int64)
    b[0:5, 10:16] = 1  # at the image border: the border itself is no edge
    labels = torch.from_numpy(np.stack([a, b]))[None]  # (B=1, F=2, H, W): frames must not leak
    for r in (1, 2):
        band = boundary_band(labels, r)
        assert band.shape == labels.shape
        for f, lab in enumerate((a, b)):
            np.testing.assert_array_equal(band[0, f].numpy(), _band_by_hand(lab, r))
    # the line lies wholly in its band, and the border rows/columns of frame b only near its edges
    assert boundary_band(labels, 1)[0, 0, 11, 1:15].all()
    assert not boundary_band(labels, 1)[0, 1, 0, 12:].any()


def test_band_on_a_real_mask_matches_opencv_morphology():
    mask = read_label_mask(KITE)
    r = 3
    kernel = np.ones((2 * r + 1, 2 * r + 1), np.uint8)
    # OpenCV's default border for dilate/erode ignores the outside, as -inf max-pooling does
    expected = cv2.dilate(mask, kernel) != cv2.erode(mask, kernel)
    band = boundary_band(torch.from_numpy(mask.astype(np.int64)), r).numpy()
    np.testing.assert_array_equal(band, expected)
    obj = mask == 1
    # both sides of the edges, and a small part of the image: the band is at the edges only
    assert band[obj].any() and band[~obj].any()
    assert 0 < band.mean() < 0.1


def test_radius_below_one_is_refused():
    with pytest.raises(ValueError, match="at least 1"):
        boundary_band(torch.zeros(4, 4, dtype=torch.long), 0)


def _square_case(wrong: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A 12x12 frame with a 6x6 square object; logits right by a margin of 4 everywhere except, for
    ``wrong="edge"``, the square's outer ring (20 pixels), or, for ``wrong="inside"``, the 4x4
    inside it (16 pixels, none next to an edge)."""
    labels = torch.zeros(1, 12, 12, dtype=torch.long)
    labels[0, 3:9, 3:9] = 1
    right = 2 * labels - 1  # +1 object, -1 background
    err = torch.zeros(1, 12, 12, dtype=torch.bool)
    if wrong == "edge":
        err[0, 3:9, 3:9] = True
        err[0, 4:8, 4:8] = False  # the ring: 20 pixels
    else:
        err[0, 4:8, 4:8] = True
    margin = torch.where(err, -4.0, 4.0) * right
    logits = torch.stack([-margin / 2, margin / 2], 1).float()  # (B, 2, H, W), logit gap = margin
    return logits, labels, err


def test_weight_zero_is_the_old_loss_exactly(random_loss_inputs):
    torch.manual_seed(0)
    b, f, k, h, w = 2, 4, 2, 16, 16
    out, batch = random_loss_inputs(b, f, k, h, w)
    logits, labels = out["logits"], batch["labels"]
    for it in (0, 30000, 10**6):  # before, during and after the hard-pixel warm-up
        old = compute_losses(out, batch, it, LossConfig())
        off = compute_losses(out, batch, it, LossConfig(boundary_weight=0.0, boundary_radius=7))
        for key in ("total", "image", "clip"):
            assert torch.equal(old[key], off[key]), (it, key)
        # and the old loss is what it always was: the per-frame CE (mean or hardest top-p mean)
        ce = BootstrappedCE()
        p = ce.p_at(it)
        per = [F.cross_entropy(logits[:, i], labels[:, i + 1], reduction="none").flatten() for i in range(f)]
        exp = sum(x.topk(max(1, int(x.numel() * p))).values.mean() if p < 1 else x.mean() for x in per)
        assert off["image"].item() == pytest.approx(float(exp), rel=1e-6)


def test_edge_errors_cost_more_with_a_weight():
    w, r = 2.0, 1
    logits, labels, err = _square_case("edge")
    band = boundary_band(labels, r)
    assert band[err].all()  # every error lies in the band
    ce = BootstrappedCE(start_warm=10**9, end_warm=10**9)  # all pixels, p = 1
    plain, _ = ce(logits, labels, 0)
    weighted, _ = ce(logits, labels, 0, 1 + w * band.float())
    # by hand: log(1 + e^-4) per right pixel, log(1 + e^4) per wrong one; weight 1 + w in the band
    lo, hi = math.log1p(math.exp(-4)), math.log1p(math.exp(4))
    n_err, n_band, n = int(err.sum()), int(band.sum()), labels.numel()
    assert plain.item() == pytest.approx((n_err * hi + (n - n_err) * lo) / n, rel=1e-6)
    exp = ((1 + w) * (n_err * hi + (n_band - n_err) * lo) + (n - n_band) * lo) / n
    assert weighted.item() == pytest.approx(exp, rel=1e-6)
    assert weighted.item() > 2.5 * plain.item()
    # the same kind of errors away from the edges: the weight changes the loss little
    logits_in, labels_in, err_in = _square_case("inside")
    assert not boundary_band(labels_in, r)[err_in].any()
    plain_in, _ = ce(logits_in, labels_in, 0)
    weighted_in, _ = ce(logits_in, labels_in, 0, 1 + w * boundary_band(labels_in, r).float())
    assert weighted_in.item() < 1.1 * plain_in.item()


def test_weight_is_applied_before_the_hardest_pixels_are_chosen():
    logits = torch.zeros(1, 2, 1, 4)
    logits[0, 1] = torch.tensor([0.0, math.log(3), -math.log(3), 10.0])
    target = torch.tensor([[[1, 1, 1, 0]]])
    per = [math.log(2), math.log(4 / 3), math.log(4), math.log1p(math.exp(10))]
    ce = BootstrappedCE(start_warm=5, end_warm=5, top_p=0.5)
    plain, _ = ce(logits, target, it=5)
    assert plain.item() == pytest.approx((per[3] + per[2]) / 2, rel=1e-5)  # the two hardest
    # pixel 0 (log 2) weighted by 3 outranks pixel 2 (log 4): it is kept, and kept weighted
    weight = torch.tensor([[[3.0, 1.0, 1.0, 1.0]]])
    weighted, p = ce(logits, target, it=5, weight=weight)
    assert p == 0.5 and weighted.item() == pytest.approx((per[3] + 3 * per[0]) / 2, rel=1e-5)


def test_gradients_are_scaled_in_the_band_and_unchanged_outside():
    torch.manual_seed(0)
    b, f, k, h, w = 2, 2, 2, 12, 12
    labels = torch.zeros(b, f + 1, h, w, dtype=torch.long)
    labels[:, :, 2:7, 3:9] = 1
    labels[:, :, 7:10, 5:11] = 2
    masks = torch.stack([(labels == i + 1).float() for i in range(k)], 2)
    batch = {"labels": labels, "masks": masks, "valid": torch.ones(b, k, dtype=torch.bool)}
    base = torch.randn(b, f, k + 1, h, w)
    grads = {}
    for weight in (0.0, 4.0):
        logits = base.clone().requires_grad_(True)
        out = {"logits": logits, "probs": logits.softmax(2), "clips": [[0], [1]]}
        cfg = LossConfig(start_warm=10**9, end_warm=10**9, clip_weight=0.0, boundary_weight=weight)
        compute_losses(out, batch, 0, cfg)["total"].backward()
        grads[weight] = logits.grad
    band = boundary_band(labels[:, 1:], 3)[:, :, None].expand_as(base)
    assert band.any() and (~band).any()
    g0, g4 = grads[0.0], grads[4.0]
    assert g4.abs().sum() > 0
    # the mean divides by the same pixel count, so outside the band the gradient is the old one and
    # inside it is (1 + w) times it, up to float32 rounding of the two ways of taking the mean
    torch.testing.assert_close(g4[~band], g0[~band], rtol=1e-5, atol=1e-9)
    torch.testing.assert_close(g4[band], 5.0 * g0[band], rtol=1e-5, atol=1e-9)


@pytest.mark.parametrize(
    "override, message",
    [
        ("loss.boundary_weight=-0.5", "loss.boundary_weight must be at least 0, got -0.5"),
        ("loss.boundary_weight=.nan", "loss.boundary_weight must be at least 0, got nan"),
        ("loss.boundary_weight=heavy", "loss.boundary_weight must be a number, got 'heavy'"),
        ("loss.boundary_radius=0", "loss.boundary_radius must be at least 1, got 0"),
        ("loss.boundary_radius=2.5", "loss.boundary_radius must be a whole number, got 2.5"),
        ("data.thin_crop_prob=1.5", "data.thin_crop_prob must be between 0 and 1, got 1.5"),
        ("data.thin_crop_prob=-0.2", "data.thin_crop_prob must be between 0 and 1, got -0.2"),
        ("data.thin_crop_prob=often", "data.thin_crop_prob must be a number, got 'often'"),
    ],
)
def test_config_checks_the_thin_structure_options(tmp_path, capsys, override, message):
    """The boundary loss's and the thin crop's options (tests/test_train_thin_crop.py): refused with a
    message naming the option, exit 2 from the CLI, nothing written."""
    with pytest.raises(ConfigError, match=re.escape(override.split("=")[0])):
        load_config(ROOT / "configs" / "tiny.yaml", [override])
    out = tmp_path / "run"
    assert pcvos_main(["train", "--config", "tiny", "-o", str(out), override]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not out.exists()


def test_config_reaches_the_loss_and_python_api_checks_it():
    cfg = load_config(ROOT / "configs" / "tiny.yaml", ["loss.boundary_weight=2", "loss.boundary_radius=4"])
    lc = LossConfig(**cfg["loss"])
    assert lc.boundary_weight == 2.0 and lc.boundary_radius == 4
    default = LossConfig(**load_config(ROOT / "configs" / "tiny.yaml")["loss"])
    assert default.boundary_weight == 0.0
    with pytest.raises(ValueError, match="boundary_weight"):
        LossConfig(boundary_weight=-1.0)
    with pytest.raises(ValueError, match="boundary_radius"):
        LossConfig(boundary_radius=0)
