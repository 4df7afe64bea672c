"""Session.suggest() and pcvos.inference.review: where to correct, on a real DAVIS sequence."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

import pcvos
from pcvos.inference import review

T = 24
SIZE = (120, 216)  # (h, w)


@pytest.fixture(scope="module")
def sequence(davis_root):
    """bmx-bumps' first T frames, small, and their ground truth: the model drifts on it."""
    seq = "bmx-bumps"
    frames = np.stack(
        [
            np.array(
                Image.open(davis_root / f"JPEGImages/480p/{seq}/{i:05d}.jpg")
                .convert("RGB")
                .resize(SIZE[::-1], Image.BILINEAR)
            )
            for i in range(T)
        ]
    )
    gt = np.stack(
        [
            (np.array(Image.open(davis_root / f"Annotations/480p/{seq}/{i:05d}.png").resize(SIZE[::-1])) > 0)
            for i in range(T)
        ]
    ).astype(np.uint8)
    return frames, gt


@pytest.fixture(scope="module")
def propagated(sequence):
    frames, gt = sequence
    s = pcvos.Session(pcvos.load_model(), frames, clip_length=5)
    assert s.suggest(3) == []  # nothing propagated yet
    s.set_mask(0, gt[0])
    assert s.suggest(3) == []  # a keyframe only
    for _ in s.propagate(0, direction="forward", until="end"):
        pass
    return s


def test_suggests_k_distinct_spread_non_keyframes(propagated):
    s = propagated
    picks = s.suggest(3)
    assert len(picks) == 3 and len(set(picks)) == 3
    assert all(isinstance(p, int) and 0 < p < T for p in picks)
    radius = max(1, round(T / (review.SPREAD_DIVISOR * 3)))
    assert radius >= 2  # so "spread" means more than distinct here
    assert all(abs(a - b) >= radius for i, a in enumerate(picks) for b in picks[i + 1 :])
    assert s.suggest(1) == picks[:1]  # best first: k = 1 is the first of k = 3
    assert s.suggest() == picks  # k = 3 by default


def test_more_than_the_frames_gives_every_candidate_once(propagated):
    picks = propagated.suggest(10 * T)
    assert sorted(picks) == list(range(1, T))


def test_keyframes_are_never_suggested(sequence):
    frames, gt = sequence
    s = pcvos.Session(pcvos.load_model(), frames, clip_length=5)
    s.set_mask(0, gt[0])
    for _ in s.propagate(0, direction="forward", until="end"):
        pass
    first = s.suggest(1)[0]
    s.set_mask(first, gt[first])  # the user corrects the suggested frame
    for _ in s.propagate(first, direction="both", until="keyframe"):
        pass
    after = s.suggest(T)
    assert first not in after and 0 not in after and len(after) == T - 2


def test_bad_k(propagated):
    for bad in (0, -1, 1.5, True, "3", None):
        with pytest.raises(ValueError, match="k must be a positive integer"):
            propagated.suggest(bad)


def test_signals_find_a_lost_frame_in_real_masks(sequence):
    _, gt = sequence
    labels = gt.copy()
    labels[9] = 0  # the object is lost on one frame
    signals = review.frame_signals(labels, [0], np.full(T, np.nan))
    assert signals["jump"][9] == 1.0 and signals["area"].argmax() == 9
    assert review.suggest_frames(labels, [0], np.full(T, np.nan), 1, weights={"area": 1.0}) == [9]
    # the decoder's doubt alone: the frame it doubts most comes first
    doubt = np.linspace(0.1, 0.2, T)
    doubt[15] = 1.0
    assert review.suggest_frames(gt, [0], doubt, 1, weights={"uncertainty": 1.0}) == [15]


def test_pick_spread_skips_neighbours_of_a_pick():
    cand = np.arange(1, 40)
    scores = np.zeros(len(cand))
    scores[[9, 10, 11]] = [3.0, 2.0, 1.0]  # frames 10, 11, 12: the three best are adjacent
    scores[29] = 0.5  # frame 30
    picks = review.pick_spread(cand, scores, 3, 40)
    assert picks[:2] == [10, 30] and len(set(picks)) == 3
    assert all(abs(a - b) >= 3 for i, a in enumerate(picks) for b in picks[i + 1 :])


def test_bad_weights():
    with pytest.raises(ValueError, match="unknown signal"):
        review.score_frames({}, np.arange(3), {"colour": 1.0})
    with pytest.raises(ValueError, match="non-negative"):
        review.score_frames({}, np.arange(3), {"jump": 0.0})
