"""Unit tests of pcvos.eval.metrics: the DAVIS J / F / statistics definitions, edge cases and
hand-computed values on tiny masks."""

from __future__ import annotations

import math

import numpy as np
import pytest

from pcvos.eval.metrics import (
    bound_pixels,
    crop_box,
    db_eval_boundary,
    db_eval_iou,
    db_statistics,
    disk,
    f_measure,
    seg2bmap,
)


def _square(h: int, w: int, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
    m = np.zeros((h, w), dtype=bool)
    m[y0:y1, x0:x1] = True
    return m


# ------------------------------------------------------------------------------------ disk
def test_disk_matches_definition_and_skimage() -> None:
    assert disk(0).tolist() == [[1]]
    assert disk(1).tolist() == [[0, 1, 0], [1, 1, 1], [0, 1, 0]]
    assert disk(2).tolist() == [
        [0, 0, 1, 0, 0],
        [0, 1, 1, 1, 0],
        [1, 1, 1, 1, 1],
        [0, 1, 1, 1, 0],
        [0, 0, 1, 0, 0],
    ]
    morph = pytest.importorskip("skimage.morphology")
    for r in range(0, 13):
        np.testing.assert_array_equal(disk(r), morph.disk(r).astype(np.uint8))


def test_bound_pixels() -> None:
    # ceil(0.008 * sqrt(480^2 + 854^2)) = ceil(7.837) = 8
    assert bound_pixels((480, 854)) == 8
    assert bound_pixels((1080, 1920)) == math.ceil(0.008 * math.hypot(1080, 1920)) == 18
    assert bound_pixels((480, 854), 3) == 3  # >= 1: a radius in pixels
    with pytest.raises(ValueError):
        bound_pixels((480, 854), 1.5)


# -------------------------------------------------------------------------------- seg2bmap
def test_seg2bmap_hand_computed() -> None:
    seg = _square(4, 4, 1, 3, 1, 3)
    expected = np.array(
        [
            [1, 1, 1, 0],
            [1, 0, 1, 0],
            [1, 1, 1, 0],
            [0, 0, 0, 0],
        ],
        dtype=bool,
    )
    np.testing.assert_array_equal(seg2bmap(seg), expected)


def test_seg2bmap_edges_and_stack() -> None:
    # a full mask has no boundary at all (image borders are not boundaries)
    assert not seg2bmap(np.ones((5, 7), bool)).any()
    # last row compares only with the east neighbour, last column only with the south one
    seg = np.zeros((3, 3), bool)
    seg[2, 1:] = True  # bottom row, two right pixels
    b = seg2bmap(seg)
    expected = np.zeros((3, 3), bool)
    expected[1, 0] = True  # SE neighbour (2,1) is foreground
    expected[1, 1] = True  # S neighbour (2,1) is foreground
    expected[1, 2] = True  # last column: S neighbour (2,2) differs
    expected[2, 0] = True  # last row: E neighbour (2,1) differs
    np.testing.assert_array_equal(b, expected)
    # a stack gives the per-frame maps
    stack = np.stack([seg, np.zeros_like(seg), _square(3, 3, 0, 2, 0, 2)])
    for t in range(3):
        np.testing.assert_array_equal(seg2bmap(stack)[t], seg2bmap(stack[t]))


def test_crop_box_keeps_all_boundary_pixels() -> None:
    rng = np.random.default_rng(0)
    for _ in range(50):
        h, w = rng.integers(3, 30, size=2)
        m = np.zeros((h, w), bool)
        y0, x0 = rng.integers(0, h), rng.integers(0, w)
        m[y0 : y0 + rng.integers(1, 8), x0 : x0 + rng.integers(1, 8)] = True
        box = crop_box(m)
        assert box is not None
        full = seg2bmap(m)
        inside = np.zeros_like(full)
        inside[box] = seg2bmap(m[box])
        np.testing.assert_array_equal(full, inside)
    assert crop_box(np.zeros((4, 4), bool)) is None


# ------------------------------------------------------------------------------------- J
def test_iou_hand_computed() -> None:
    a = _square(4, 4, 0, 2, 0, 2)
    b = _square(4, 4, 1, 3, 1, 3)
    assert db_eval_iou(a, b) == pytest.approx(1 / 7)
    assert db_eval_iou(a, a) == 1.0


def test_iou_empty_cases() -> None:
    z = np.zeros((5, 5), bool)
    m = _square(5, 5, 1, 3, 1, 3)
    assert db_eval_iou(z, z) == 1.0  # both empty: J = 1
    assert db_eval_iou(m, z) == 0.0  # empty prediction
    assert db_eval_iou(z, m) == 0.0  # empty ground truth


def test_iou_vectorised_over_frames() -> None:
    a = np.stack([_square(6, 6, 0, 2, 0, 2), np.zeros((6, 6), bool), _square(6, 6, 0, 3, 0, 3)])
    b = np.stack([_square(6, 6, 1, 3, 1, 3), np.zeros((6, 6), bool), _square(6, 6, 0, 3, 0, 3)])
    j = db_eval_iou(a, b)
    assert isinstance(j, np.ndarray) and j.shape == (3,)
    np.testing.assert_allclose(j, [1 / 7, 1.0, 1.0])


def test_iou_void_pixels_excluded() -> None:
    gt = _square(20, 20, 10, 15, 5, 15)
    void = _square(20, 20, 5, 10, 5, 15)
    pred = _square(20, 20, 5, 15, 5, 15)  # = gt plus the void region
    assert db_eval_iou(gt, pred) == pytest.approx(0.5)
    assert db_eval_iou(gt, pred, void) == 1.0
    # a union made only of void pixels is empty -> 1
    assert db_eval_iou(np.zeros_like(gt), void, void) == 1.0


def test_iou_shape_mismatch() -> None:
    with pytest.raises(ValueError):
        db_eval_iou(np.zeros((3, 3)), np.zeros((3, 4)))


# ------------------------------------------------------------------------------------- F
def test_f_hand_computed_shifts() -> None:
    # 5x5 squares: boundary = 6x6 ring of 20 pixels (rows/cols 4..9 for the gt square)
    gt = _square(20, 20, 5, 10, 5, 10)
    assert np.count_nonzero(seg2bmap(gt)) == 20
    shift1 = _square(20, 20, 5, 10, 6, 11)
    shift2 = _square(20, 20, 5, 10, 7, 12)
    # tolerance 0 px: the rings share 10 pixels -> P = R = 0.5
    assert f_measure(shift1, gt, bound_th=0) == pytest.approx(0.5)
    # tolerance 1 px (a cross): every pixel of a ring shifted by 1 is matched
    assert f_measure(shift1, gt, bound_th=1) == 1.0
    # shifted by 2 with a 1 px cross: 12 of 20 pixels matched both ways -> F = 0.6
    assert f_measure(shift2, gt, bound_th=1) == pytest.approx(0.6)
    # with the default tolerance (ceil(0.008 * 28.28) = 1 px at 20x20) it is the same
    assert f_measure(shift2, gt) == pytest.approx(0.6)


def test_f_empty_cases() -> None:
    z = np.zeros((10, 10), bool)
    m = _square(10, 10, 2, 6, 2, 6)
    assert f_measure(z, z) == 1.0  # no boundary anywhere: P = R = 1
    assert f_measure(z, m) == 0.0  # empty prediction: P = 1, R = 0
    assert f_measure(m, z) == 0.0  # empty ground truth: P = 0, R = 1
    full = np.ones((10, 10), bool)
    assert f_measure(full, full) == 1.0  # a full mask has no boundary
    assert f_measure(full, m) == 0.0


def test_f_void_pixels_removed_before_boundaries() -> None:
    # the toolkit's own test: gt below, void above, prediction covering both
    gt = np.zeros((2, 40, 40), bool)
    gt[:, 20:30, 20:30] = True
    void = np.zeros_like(gt)
    void[:, 10:20, 20:30] = True
    pred = np.zeros_like(gt)
    pred[:, 10:30, 20:30] = True
    assert np.all(db_eval_iou(gt, pred, void) == 1)
    assert np.all(db_eval_boundary(gt, pred, void) == 1)
    assert np.all(db_eval_boundary(gt, pred) < 1)


def test_db_eval_boundary_stack_equals_frames() -> None:
    rng = np.random.default_rng(3)
    a = rng.random((4, 24, 30)) < 0.3
    b = rng.random((4, 24, 30)) < 0.3
    out = db_eval_boundary(a, b)
    assert out.shape == (4,)
    for t in range(4):
        assert out[t] == f_measure(b[t], a[t])  # note: f_measure takes the prediction first
    assert isinstance(db_eval_boundary(a[0], b[0]), float)


def test_f_and_j_are_symmetric_in_exchange_only_for_j() -> None:
    a = _square(30, 30, 5, 20, 5, 20)
    b = _square(30, 30, 8, 12, 8, 25)
    assert db_eval_iou(a, b) == db_eval_iou(b, a)
    assert f_measure(a, b) == pytest.approx(f_measure(b, a))  # F is symmetric too (P <-> R)


# ------------------------------------------------------------------------------ statistics
def test_statistics_recall_threshold_is_strict() -> None:
    mean, recall, _ = db_statistics(np.array([0.5, 0.51, 1.0, 0.0]))
    assert mean == pytest.approx(0.5025)
    assert recall == 0.5  # 0.5 itself does not count


def test_statistics_decay_binning() -> None:
    # N = 8: ids = round(linspace(1, 8, 5) + 1e-10) - 1 = [0, 2, 4, 5, 7]
    # first bin v[0:3], last bin v[5:8] -> 1 - 6
    assert db_statistics(np.arange(8.0))[2] == pytest.approx(-5.0)
    # N = 10: ids = [0, 2, 5, 7, 9] -> mean(0, 1, 2) - mean(7, 8, 9)
    assert db_statistics(np.arange(10.0))[2] == pytest.approx(-7.0)
    # N = 7: linspace = [1, 2.5, 4, 5.5, 7]; the +1e-10 makes 2.5 round up -> ids = [0, 2, 3, 5, 6]
    # first bin v[0:3] (not v[0:2] as round-half-even would give), last bin v[5:7]
    assert db_statistics(np.arange(7.0))[2] == pytest.approx(1.0 - 5.5)
    # decreasing values give a positive decay
    assert db_statistics(np.linspace(1, 0, 20))[2] > 0
    # one frame: all bins are that frame
    assert db_statistics(np.array([0.7])) == pytest.approx((0.7, 1.0, 0.0))


def test_statistics_nan_aware() -> None:
    v = np.array([1.0, np.nan, 0.0, 1.0])
    mean, recall, decay = db_statistics(v)
    assert mean == pytest.approx(2 / 3)  # NaN ignored
    assert recall == pytest.approx(0.5)  # NaN counts as a miss (NaN > 0.5 is False)
    # ids = [0, 1, 2, 2, 3]: nanmean([1, nan]) - nanmean([0, 1])
    assert decay == pytest.approx(0.5)
    m, r, d = db_statistics(np.array([]))
    assert math.isnan(m) and math.isnan(r) and math.isnan(d)


def test_statistics_long_sequences_use_exact_bins() -> None:
    v = np.arange(300.0)
    # ids = round(linspace(1, 300, 5)) - 1 = [0, 75, 150, 224, 299]
    expected = np.mean(v[0:76]) - np.mean(v[224:300])
    assert db_statistics(v)[2] == pytest.approx(expected)
