"""Training data: frame sampling rules, curriculum, samples, sources, batch sampler sharding."""

from itertools import pairwise

import numpy as np
import pytest
import torch
from PIL import Image

from pcvos.data.augment import StaticAugment, VideoAugment, tps_maps
from pcvos.data.synthetic import SyntheticImages, SyntheticVideos, make_video, write_davis_layout
from pcvos.data.train_datasets import (
    DEFAULT_GAP_SCHEDULE,
    ImageFolderSource,
    MixedDataset,
    StaticDataset,
    TrainBatchSampler,
    VideoClipDataset,
    davis_source,
    gap_at,
    read_label_mask,
    sample_clip_indices,
    youtube_source,
)


def test_gap_curriculum_grows_then_anneals():
    values = [gap_at(p / 100, DEFAULT_GAP_SCHEDULE) for p in range(101)]
    assert values[0] == 5 and max(values) == 15 and values[-1] == 5
    peak = values.index(15)
    assert all(a <= b for a, b in pairwise(values[: peak + 1]))  # non-decreasing to the peak
    assert all(a >= b for a, b in pairwise(values[peak:]))  # then non-increasing


@pytest.mark.parametrize("max_gap", [5, 10, 15])
def test_clip_sampling_respects_gaps(max_gap):
    rng = np.random.default_rng(0)
    n, clip, clips, skip = 80, 3, 2, 5
    seen_gaps = set()
    for _ in range(300):
        idx = sample_clip_indices(rng, n, clip, clips, max_gap, skip)
        assert len(idx) == 1 + clip * clips
        assert 0 <= idx[0] and idx[-1] < n
        d = np.diff(idx)
        assert (d >= 1).all()
        gaps = d[0::clip]  # reference -> clip 1, clip 1 -> clip 2
        inner = np.delete(d, np.arange(0, len(d), clip))
        assert (gaps <= max_gap).all() and (inner <= skip).all()
        seen_gaps.update(gaps.tolist())
    assert max(seen_gaps) == max_gap  # the whole range is used


def test_clip_sampling_short_video():
    rng = np.random.default_rng(1)
    for _ in range(100):
        idx = sample_clip_indices(rng, 9, 3, 2, 15, 5)
        assert idx[-1] < 9 and (np.diff(idx) >= 1).all()
    with pytest.raises(ValueError):
        sample_clip_indices(rng, 6, 3, 2, 5, 5)


def test_video_dataset_samples():
    src = SyntheticVideos(4, 30, (48, 48), 3)
    ds = VideoClipDataset(
        src, crop=(32, 32), clip_len=3, max_objects=3, min_pixels=5, augment=VideoAugment(crop=(32, 32))
    )
    for i in range(4):
        s = ds[(i, 0, i, 0.5)]
        assert s["frames"].shape == (7, 3, 32, 32) and s["masks"].shape == (7, 3, 32, 32)
        assert 0.0 <= s["frames"].min() and s["frames"].max() <= 1.0
        k = s["num_objects"]
        assert 1 <= k <= 3 and s["valid"].sum() == k
        assert (s["masks"][0, :k].flatten(1).sum(1) >= 5).all()  # every object visible in the reference
        assert s["masks"][:, k:].sum() == 0
        assert torch.equal(s["labels"], (s["masks"] * torch.arange(1, 4).view(1, 3, 1, 1)).sum(1).long())
        d = np.diff(s["frame_indices"].numpy())
        assert (d[0::3] <= 15).all() and (np.delete(d, [0, 3]) <= 5).all()
    # deterministic in the key
    a, b = ds[(1, 3, 7, 0.2)], ds[(1, 3, 7, 0.2)]
    assert torch.equal(a["frames"], b["frames"]) and torch.equal(a["labels"], b["labels"])


def test_frame_wise_dataset():
    ds = VideoClipDataset(
        SyntheticVideos(2, 40, (32, 32), 1),
        crop=(32, 32),
        mode="frame_wise",
        gap_schedule=[[0, 25]],
        min_pixels=5,
    )
    s = ds[(0, 0, 0, 0.0)]
    assert s["frames"].shape[0] == 3
    d = np.diff(s["frame_indices"].numpy())
    assert (d >= 1).all() and (d <= 25).all()


def test_composite_adds_an_object():
    ds = VideoClipDataset(
        SyntheticVideos(4, 20, (48, 48), 1), crop=(48, 48), max_objects=3, min_pixels=5, composite_prob=1.0
    )
    counts = [ds[(i, 0, i, 0.0)]["num_objects"] for i in range(8)]
    assert max(counts) == 2 and min(counts) >= 1


def test_static_dataset_and_tps():
    rng = np.random.default_rng(0)
    mx, my = tps_maps(rng, (20, 30), magnitude=0.0)
    gy, gx = np.mgrid[0:20, 0:30]
    assert np.allclose(mx, gx, atol=1e-3) and np.allclose(my, gy, atol=1e-3)  # zero displacement: identity
    ds = StaticDataset(
        SyntheticImages(4, (48, 48)),
        crop=(32, 32),
        num_frames=3,
        min_pixels=5,
        augment=StaticAugment(crop=(32, 32), resize_short=None),
    )
    s = ds[(0, 0, 0, 0.0)]
    assert s["frames"].shape == (3, 3, 32, 32) and s["num_objects"] == 1
    assert s["masks"][0, 0].sum() >= 5
    assert not torch.equal(s["frames"][0], s["frames"][1])  # independent deformations


def test_folder_sources(tmp_path):
    names = write_davis_layout(tmp_path / "davis", num_videos=3, num_frames=8, size=(32, 32), year="2016")
    src = davis_source(tmp_path / "davis", exclude=[names[0]])
    assert len(src) == 2 and src.num_frames(0) == 8
    assert src.frame(0, 0).shape == (32, 32, 3) and src.mask(0, 0).dtype == np.uint8
    # YouTube-VOS layout (annotations every 5th frame only) and a static folder
    yv = tmp_path / "yt" / "train"
    f, m = make_video(0, 10, (32, 32), 2)
    for t in range(10):
        (yv / "JPEGImages" / "v1").mkdir(parents=True, exist_ok=True)
        (yv / "Annotations" / "v1").mkdir(parents=True, exist_ok=True)
        Image.fromarray(f[t]).save(yv / "JPEGImages" / "v1" / f"{t * 5:05d}.jpg")
        if t % 2 == 0:
            im = Image.fromarray(m[t])
            im.putpalette([0, 0, 0, 255, 0, 0, 0, 255, 0] + [0] * 759)
            im.save(yv / "Annotations" / "v1" / f"{t * 5:05d}.png")
    ys = youtube_source(tmp_path / "yt")
    assert len(ys) == 1 and ys.num_frames(0) == 5
    assert set(np.unique(ys.mask(0, 0))) <= {0, 1, 2}
    st = tmp_path / "static"
    (st / "images").mkdir(parents=True)
    (st / "masks").mkdir(parents=True)
    Image.fromarray(f[0]).save(st / "images" / "a.jpg")
    Image.fromarray(((m[0] > 0) * 255).astype(np.uint8)).save(st / "masks" / "a.png")  # 0/255 grayscale
    ims = ImageFolderSource(st)
    img, msk = ims.item(0)
    assert img.shape == (32, 32, 3) and set(np.unique(msk)) <= {0, 1}
    assert read_label_mask(st / "masks" / "a.png").max() == 1


def test_batch_sampler_shards_and_resumes():
    n, b, world, total = 10, 2, 2, 12
    shards = [TrainBatchSampler(n, b, total, seed=3, rank=r, world_size=world) for r in range(world)]
    single = TrainBatchSampler(n, b * world, total, seed=3)
    for it in range(total):
        keys = shards[0].batch(it) + shards[1].batch(it)
        assert keys == single.batch(it)  # same global stream, split across ranks
    positions = [k[2] for it in range(5) for r in range(world) for k in shards[r].batch(it)]
    assert positions == list(range(5 * world * b))  # no sample position used twice
    epoch0 = [k[0] for it in range(5) for r in range(world) for k in shards[r].batch(it)][:n]
    assert sorted(epoch0) == list(range(n))  # each epoch is a permutation
    resumed = TrainBatchSampler(n, b, total, seed=3, rank=1, world_size=world, start_iteration=7)
    assert list(resumed) == [shards[1].batch(it) for it in range(7, total)]


def test_mixed_dataset_repeat():
    a = VideoClipDataset(SyntheticVideos(2, 20, (32, 32), 1), crop=(32, 32), min_pixels=5)
    c = VideoClipDataset(SyntheticVideos(3, 20, (32, 32), 1, seed=5), crop=(32, 32), min_pixels=5)
    m = MixedDataset([(a, 2), (c, 1)])
    assert len(m) == 2 * 2 + 3
    assert m[(5, 0, 0, 0.0)]["name"].startswith("synthetic-")
