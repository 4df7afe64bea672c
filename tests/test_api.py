"""Public inference API: semantics beyond parity, streaming, bad input."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import pcvos
from pcvos.inference.memory_store import MemoryStore


@pytest.fixture(scope="module")
def clip(parity_fixture):
    # odd size (not a multiple of 16) so padding and cropping are exercised
    frames = parity_fixture["frames"][:, 5:120, 7:210].copy()
    label = parity_fixture["label"][5:120, 7:210].copy()
    return frames, label


def test_labels_are_argmax_of_probs_with_user_ids(pcvos_model, clip):
    frames, label = clip
    ids = np.zeros_like(label)
    ids[label == 1], ids[label == 2] = 7, 3  # non-contiguous, not in order
    probs = pcvos.segment(pcvos_model, frames, {0: ids}, clip_length=3, output="probs")
    labels = pcvos.segment(pcvos_model, frames, {0: ids}, clip_length=3)
    assert probs.shape == (3, 8, *label.shape) and labels.shape == (8, *label.shape)
    np.testing.assert_allclose(probs.sum(0), 1.0, atol=1e-5)
    lut = np.array([0, 3, 7], np.uint8)  # channels: background, then ascending ids
    assert (labels[1:] == lut[probs[:, 1:].argmax(0)]).all()
    assert (labels[0] == ids).all()
    assert set(np.unique(labels)) <= {0, 3, 7}


@pytest.mark.parametrize("channels", [1, 2, 4])
def test_registry_labels_equal_argmax_with_ties(channels):
    from pcvos.inference.objects import ObjectRegistry

    reg = ObjectRegistry()
    reg.add([9, 4, 200][: channels - 1], 0)
    lut = torch.from_numpy(reg.label_lut())
    gen = torch.Generator().manual_seed(channels)
    for probs in (
        torch.rand(channels, 3, 19, 23, generator=gen),
        torch.randint(0, 3, (channels, 3, 19, 23), generator=gen).float(),
    ):  # many ties
        got = reg.labels(probs)
        assert got.dtype == torch.uint8
        assert torch.equal(got, lut[probs.argmax(0)])


def test_streaming_matches_one_call(pcvos_model, clip):
    frames, label = clip
    whole = pcvos.segment(pcvos_model, frames, {0: label}, clip_length=3, output="probs")
    seg = pcvos.Segmenter(pcvos_model, clip_length=3, output="probs")
    seg.add_mask(0, label)
    seen = []

    def gen():
        for i, f in enumerate(frames):
            seen.append(i)
            yield f

    for index, p in seg.process(gen()):
        # a clip is returned as soon as its last frame has been read
        assert seen[-1] - index <= 2
        np.testing.assert_allclose(p, whole[:, index], atol=1e-6)


def test_object_entering_later_and_frames_before_first_mask(pcvos_model, clip):
    frames, label = clip
    first = np.where(label == 1, 1, 0).astype(np.uint8)
    later = np.where(label == 2, 5, 0).astype(np.uint8)
    probs = pcvos.segment(pcvos_model, frames, {1: first, 4: later}, clip_length=2, output="probs")
    assert probs.shape[0] == 3  # background, id 1, id 5
    assert np.allclose(probs[0, 0], 1) and np.allclose(probs[1:, 0], 0)  # before any mask
    assert np.allclose(probs[2, 1:4], 0)  # id 5 is absent before frame 4
    assert (probs[:, 4].argmax(0)[later == 5] == 2).all()  # the given mask holds at its frame
    assert probs[2, 5:].min() > 1e-3  # and has a prediction afterwards (random weights: no accuracy claim)
    labels = pcvos.segment(pcvos_model, frames, {1: first, 4: later}, clip_length=2)
    assert (labels[0] == 0).all() and (labels[4][later == 5] == 5).all()


def test_stcn_and_clip_lengths_run_on_one_model(pcvos_model, clip):
    frames, label = clip
    for kwargs in (
        dict(clip_length=1, memory_every=5, pmm_segment=None, refine=False),
        dict(clip_length=8, pmm_segment=2),
        dict(clip_length=4, memory_every=2),
    ):
        out = pcvos.segment(pcvos_model, frames, {0: label}, **kwargs)
        assert out.shape == (8, *label.shape)


def test_resize_option_outputs_input_resolution(pcvos_model, clip):
    frames, label = clip
    out = pcvos.segment(pcvos_model, frames[:4], {0: label}, clip_length=3, size=64, output="probs")
    assert out.shape == (3, 4, *label.shape)
    np.testing.assert_allclose(out.sum(0), 1.0, atol=1e-4)


def test_memory_cap_keeps_annotated_frames():
    store = MemoryStore(key_dim=2, value_dim=1, max_frames=3)
    for t in range(6):
        store.add(t, torch.full((4, 2), float(t)), torch.full((4, 1), float(t)), annotated=(t == 0))
    assert [f.index for f in store.frames] == [0, 4, 5]
    assert store.rows == 12
    assert store.block().keys[:, 0].tolist() == [0.0] * 4 + [4.0] * 4 + [5.0] * 4


def test_memory_cap_in_segment(pcvos_model, clip):
    frames, label = clip
    capped = pcvos.segment(
        pcvos_model,
        frames,
        {0: label},
        clip_length=1,
        memory_every=1,
        refine=False,
        pmm_segment=None,
        max_memory_frames=2,
        output="probs",
    )
    full = pcvos.segment(
        pcvos_model,
        frames,
        {0: label},
        clip_length=1,
        memory_every=1,
        refine=False,
        pmm_segment=None,
        output="probs",
    )
    assert np.abs(capped[:, :3] - full[:, :3]).max() < 1e-6  # identical until the cap bites
    assert np.abs(capped - full).max() > 1e-6


@pytest.mark.parametrize(
    "frames, message",
    [
        (np.zeros((2, 32, 32), np.uint8), "uint8 array of shape"),
        (np.zeros((2, 32, 32, 3), np.float32), "uint8 array of shape"),
        (np.zeros((0, 32, 32, 3), np.uint8), "no frames"),
    ],
)
def test_bad_frames(pcvos_model, frames, message):
    with pytest.raises(ValueError, match=message):
        pcvos.segment(pcvos_model, frames, {0: np.ones((32, 32), np.uint8)})


def test_bad_masks(pcvos_model):
    frames = np.zeros((3, 32, 32, 3), np.uint8)
    one = np.ones((32, 32), np.uint8)
    with pytest.raises(ValueError, match="shape"):
        pcvos.segment(pcvos_model, frames, {0: np.ones((16, 32), np.uint8)})
    with pytest.raises(ValueError, match="out of range"):
        pcvos.segment(pcvos_model, frames, {3: one})
    with pytest.raises(ValueError, match="no object"):
        pcvos.segment(pcvos_model, frames, {0: np.zeros((32, 32), np.uint8)})
    with pytest.raises(ValueError, match="no mask"):
        pcvos.segment(pcvos_model, frames, {})
    with pytest.raises(ValueError, match="clip_length"):
        pcvos.segment(pcvos_model, frames, {0: one}, clip_length=0)


WHOLE_NUMBER_SETTINGS = [
    "clip_length",
    "top_k",
    "memory_every",
    "pmm_segment",
    "max_memory_frames",
    "frame_batch",
    "size",
]


@pytest.mark.parametrize("name", WHOLE_NUMBER_SETTINGS)
@pytest.mark.parametrize("value", [2.5, 5.0, True, "5", np.float32(3)])
def test_counts_are_whole_numbers(pcvos_model, name, value):
    """clip_length=2.5 made clips of 1 and 19 frames (truncated here, compared as a float there)."""
    frames = np.zeros((3, 32, 32, 3), np.uint8)
    one = np.ones((32, 32), np.uint8)
    with pytest.raises(ValueError, match=name):
        pcvos.segment(pcvos_model, frames, {0: one}, **{name: value})
    with pytest.raises(ValueError, match=name):
        pcvos.Segmenter(pcvos_model, **{name: value})


def test_numpy_integers_are_whole_numbers(pcvos_model):
    frames = np.zeros((3, 32, 32, 3), np.uint8)
    one = np.ones((32, 32), np.uint8)
    out = pcvos.segment(pcvos_model, frames, {0: one}, clip_length=np.int64(2), top_k=np.int32(20))
    assert out.shape == (3, 32, 32)


def test_refine_requires_a_refiner(stcn_model):
    frames = np.zeros((2, 32, 32, 3), np.uint8)
    with pytest.raises(ValueError, match="refine=False"):
        pcvos.segment(stcn_model, frames, {0: np.ones((32, 32), np.uint8)})
