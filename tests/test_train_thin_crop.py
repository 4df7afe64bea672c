"""Crops placed on thin structures (data.thin_crop_prob): which pixels are thin, that the crops
hold more of them than the normal crop on real DAVIS annotations, the fallback, that the default
stream is the old one, and the config."""

from pathlib import Path

import cv2
import numpy as np
import pytest

from pcvos.data.augment import ColorJitter, StaticAugment, VideoAugment, thin_pixels
from pcvos.data.train_datasets import read_label_mask
from pcvos.train.config import load_config
from pcvos.train.trainer import build_dataset

ROOT = Path(__file__).resolve().parents[1]
MASKS = ROOT / "tests" / "data" / "export_masks"  # DAVIS 2016 annotations, 854x480
# kite-walk 20: the kite's lines; bmx-bumps 20: the bike's wheels and frame
THIN = ["kite-walk-00020", "bmx-bumps-00020"]
STILL = ColorJitter(0.0, 0.0, 0.0, 0.0)


def _mask(name: str) -> np.ndarray:
    return read_label_mask(MASKS / f"{name}.png")


def test_thin_pixels_are_lines_not_bulk():
    m = np.zeros((120, 160), np.uint8)
    cv2.circle(m, (60, 60), 35, 1, -1)
    m[58:60, 95:150] = 1  # a 2-pixel line sticking out of the disk
    cv2.circle(m, (140, 20), 8, 2, -1)  # a small second object with its own, smaller, thin part
    m[19, 100:132] = 2
    m[100:110, 100:110] = 255  # void is no object
    thin = thin_pixels(m)
    assert thin[58:60, 96:150].all() and thin[19, 100:132].all()
    disk = np.zeros_like(m)
    cv2.circle(disk, (60, 60), 32, 1, -1)  # the disk's inside, away from its edge
    assert not thin[disk > 0].any()
    assert not thin[100:110, 100:110].any()
    assert not thin[m == 0].any()
    # on the real masks: a part of the object, small but not empty
    for name in THIN:
        real = _mask(name)
        t = thin_pixels(real)
        assert 0.05 < t.sum() / (real == 1).sum() < 0.5 and not t[real == 0].any()


def _thin_image(mask: np.ndarray) -> np.ndarray:
    """An image that is 255 exactly at the mask's thin pixels: the augmented image then shows
    (bilinear) what of them the crop holds."""
    return np.repeat((thin_pixels(mask) * 255).astype(np.uint8)[..., None], 3, axis=2)


def _held(kind: str, name: str, prob: float, seeds: range) -> list[int]:
    mask = _mask(name)
    image = _thin_image(mask)
    held = []
    for seed in seeds:
        rng = np.random.default_rng(seed)
        if kind == "video":
            aug = VideoAugment(
                crop=(192, 192), seq_jitter=STILL, frame_jitter=STILL, grayscale_prob=0, thin_crop_prob=prob
            )
            frames, _ = aug(rng, [image] * 3, [mask] * 3)
        else:
            aug = StaticAugment(crop=(192, 192), jitter=STILL, grayscale_prob=0, thin_crop_prob=prob)
            frames, _ = aug(rng, image, mask, 3)
        held.append(int((frames[..., 0] > 0).sum()))
    return held


@pytest.mark.parametrize("kind", ["video", "static"])
@pytest.mark.parametrize("name", THIN)
def test_thin_crops_hold_more_thin_pixels_than_normal_crops(kind, name):
    seeds = range(8)
    normal = _held(kind, name, 0.0, seeds)
    thin = _held(kind, name, 1.0, seeds)
    # over the seeds, and in the worst case (a normal crop can cut the thin part away)
    assert sum(thin) > 1.1 * sum(normal), (normal, thin)
    assert min(thin) > min(normal), (normal, thin)


def test_video_thin_crop_keeps_the_size_and_is_deterministic():
    mask = _mask("kite-walk-00020")
    h, w = mask.shape
    thin = VideoAugment(thin_crop_prob=1.0)
    for seed in range(4):
        normal = VideoAugment().sequence_params(np.random.default_rng(seed), h, w)
        a = thin.sequence_params(np.random.default_rng(seed), h, w, [mask])
        b = thin.sequence_params(np.random.default_rng(seed), h, w, [mask])
        assert a == b
        assert a["box"][2:] == normal["box"][2:]  # same size: only the place changes
        x0, y0, bw, bh = a["box"]
        assert 0 <= x0 <= w - bw and 0 <= y0 <= h - bh


def test_thin_crop_falls_back_to_the_normal_crop_without_thin_parts():
    empty = np.zeros((120, 160), np.uint8)
    empty[10:30, 10:30] = 255  # void only
    for seed in range(3):
        normal = VideoAugment().sequence_params(np.random.default_rng(seed), 120, 160)
        thin = VideoAugment(thin_crop_prob=1.0).sequence_params(
            np.random.default_rng(seed), 120, 160, [empty]
        )
        assert thin["box"] == normal["box"]
    frames, masks = StaticAugment(crop=(48, 48), resize_short=None, thin_crop_prob=1.0)(
        np.random.default_rng(0), np.zeros((120, 160, 3), np.uint8), empty, 3
    )
    assert frames.shape == (3, 48, 48, 3) and masks.shape == (3, 48, 48)


# The default (thin_crop_prob 0) stream, recorded with the code before thin crops existed (commit
# e56d386): sequence boxes, and for a 96x96 crop of the kite-walk mask the sum of the crop's labels
# and the generator's next draw (the same number of draws were taken).
OLD_BOXES = {
    0: (412.9551162452175, 20.745717898313682, 346.22890948118794, 457.2713326384842),
    1: (36.000092039375254, 12.88187072067517, 604.2761601518076, 466.4208314677787),
    2: (204.43513951744984, 4.800103111731316, 490.4082798396238, 448.01259020087946),
}
OLD_VIDEO = {0: (3868, 0.6504592762678163), 1: (2190, 0.2768912040453708), 2: (2756, 0.40654239767553646)}
OLD_STATIC = {0: (3047, 0.909958961662297), 1: (3283, 0.8469983706337296), 2: (1883, 0.24466009569263347)}


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_default_stream_is_the_old_one(seed):
    mask = _mask("kite-walk-00020")
    black = np.zeros((*mask.shape, 3), np.uint8)
    for aug in (VideoAugment(), VideoAugment(thin_crop_prob=0.0)):
        p = aug.sequence_params(np.random.default_rng(seed), *mask.shape, [mask])
        assert p["box"] == pytest.approx(OLD_BOXES[seed], rel=1e-12)
    rng = np.random.default_rng(seed)
    _, m = VideoAugment(crop=(96, 96), thin_crop_prob=0.0)(rng, [black] * 3, [mask] * 3)
    assert (int(m.sum()), rng.random()) == pytest.approx(OLD_VIDEO[seed], rel=1e-12)
    rng = np.random.default_rng(seed)
    _, m = StaticAugment(crop=(96, 96), thin_crop_prob=0.0)(rng, black, mask, 3)
    assert (int(m.sum()), rng.random()) == pytest.approx(OLD_STATIC[seed], rel=1e-12)


@pytest.mark.parametrize("cls", [VideoAugment, StaticAugment])
def test_python_api_refuses_a_probability_outside_0_1(cls):
    for bad in (-0.1, 1.5, float("nan")):
        with pytest.raises(ValueError, match="thin_crop_prob must be a probability"):
            cls(thin_crop_prob=bad)


# the option's config checks are in tests/test_train_boundary_loss.py (one test for both options)


def test_config_reaches_video_and_static_augmentation():
    tiny = ROOT / "configs" / "tiny.yaml"
    assert build_dataset(load_config(tiny)).parts[0][0].augment.thin_crop_prob == 0.0
    video = build_dataset(load_config(tiny, ["data.thin_crop_prob=0.5"]))
    assert video.parts[0][0].augment.thin_crop_prob == 0.5
    assert video[(0, 0, 0, 0.0)]["frames"].shape[0] == video.num_sample_frames
    static = build_dataset(
        load_config(
            tiny,
            [
                "data.mode=static",
                "data.thin_crop_prob=1",
                "data.sources=[{type: synthetic_static, num_images: 4, size: [64, 64]}]",
            ],
        )
    )
    assert static.parts[0][0].augment.thin_crop_prob == 1.0
    assert static[(1, 0, 0, 0.0)]["frames"].shape[0] == static.num_sample_frames
