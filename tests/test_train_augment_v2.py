"""The augmentations aimed at fast motion and scale change, and DAVIS frames as static images."""

import numpy as np
import pytest

from pcvos.data.augment import StaticAugment, VideoAugment, motion_blur
from pcvos.data.synthetic import write_davis_layout
from pcvos.data.train_datasets import StaticDataset, VideoFramesSource, davis_source


def _square_video(n: int = 7, size: int = 96) -> tuple[list[np.ndarray], list[np.ndarray]]:
    frames, masks = [], []
    for _ in range(n):
        f = np.full((size, size, 3), 40, np.uint8)
        m = np.zeros((size, size), np.uint8)
        f[36:60, 36:60] = 220
        m[36:60, 36:60] = 1
        frames.append(f)
        masks.append(m)
    return frames, masks


def test_default_video_augment_draws_the_same_stream():
    frames, masks = _square_video()
    a = VideoAugment(crop=(64, 64))(np.random.default_rng(3), frames, masks)
    b = VideoAugment(crop=(64, 64), zoom_range=(1.0, 1.0), motion_blur_prob=0.0)(
        np.random.default_rng(3), frames, masks
    )
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])


@pytest.mark.parametrize("zoom, grows", [((1.8, 1.8), True), ((0.55, 0.55), False)])
def test_zoom_changes_object_size_across_the_sample(zoom, grows):
    frames, masks = _square_video()
    aug = VideoAugment(
        crop=(96, 96),
        scale=(1.0, 1.0),
        ratio=(1.0, 1.0),
        flip_prob=0,
        frame_shear=0,
        frame_scale=(1.0, 1.0),
        zoom_range=zoom,
    )
    _, m = aug(np.random.default_rng(0), frames, masks)
    areas = [(x == 1).sum() for x in m]
    assert (areas[-1] > 1.5 * areas[0]) if grows else (areas[-1] < 0.5 * areas[0])
    assert all(np.diff(areas) >= 0) if grows else all(np.diff(areas) <= 0)  # monotone, up to rounding


def test_motion_blur_smears_along_its_direction_and_keeps_brightness():
    img = np.zeros((41, 41, 3), np.float32)
    img[20, 20] = 255
    horizontal = motion_blur(img, 9, 0.0)
    assert horizontal[20, 16:25, 0].min() > 0  # spread along the row
    assert horizontal[15, 20, 0] == 0 and horizontal[25, 20, 0] == 0  # not across it
    assert horizontal.sum() == pytest.approx(img.sum(), rel=1e-4)
    vertical = motion_blur(img, 9, 90.0)
    assert vertical[16:25, 20, 0].min() > 0 and vertical[20, 15, 0] == 0


def test_blur_leaves_masks_alone():
    frames, masks = _square_video()
    aug = VideoAugment(
        crop=(96, 96),
        scale=(1.0, 1.0),
        ratio=(1.0, 1.0),
        flip_prob=0,
        frame_shear=0,
        frame_scale=(1.0, 1.0),
        motion_blur_prob=1.0,
    )
    f, m = aug(np.random.default_rng(1), frames, masks)
    plain = VideoAugment(
        crop=(96, 96), scale=(1.0, 1.0), ratio=(1.0, 1.0), flip_prob=0, frame_shear=0, frame_scale=(1.0, 1.0)
    )(np.random.default_rng(1), frames, masks)
    np.testing.assert_array_equal(m, plain[1])
    assert not np.array_equal(f, plain[0])


def test_video_frames_as_static_images(tmp_path):
    names = write_davis_layout(tmp_path, num_videos=2, num_frames=9, size=(64, 80), max_objects=1)
    src = VideoFramesSource(davis_source(tmp_path, "train", sequences=names), every=4)
    assert len(src) == 3 + 3  # frames 0, 4, 8 of each
    img, msk = src.item(4)
    assert img.shape == (64, 80, 3) and msk.shape == (64, 80) and src.name(4) == f"{names[1]}/4"
    with pytest.raises(ValueError):
        VideoFramesSource(davis_source(tmp_path, "train", sequences=names), every=0)
    ds = StaticDataset(src, (48, 48), 3, augment=StaticAugment(crop=(48, 48), resize_short=None))
    sample = ds[(0, 0, 0, 0.0)]
    assert sample["frames"].shape[0] == 3
