"""pcvos.Session: keyframes, propagation both ways, corrections, cancel, lazy frames, bad input."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import pcvos
from pcvos.data.frames import VideoReader, VideoWriter
from pcvos.data.synthetic import make_video

T = 20
CLIP = 3


@pytest.fixture(scope="module")
def lite():
    return pcvos.load_model()  # the shipped pcvos-lite: real weights, fast on small frames


@pytest.fixture(scope="module")
def video():
    # not a multiple of 16, so padding and cropping are exercised; two objects that move and occlude
    frames, masks = make_video(seed=3, num_frames=T, size=(76, 102), num_objects=2)
    return frames, masks


def _session(lite, frames, **kw) -> pcvos.Session:
    return pcvos.Session(lite, frames, clip_length=CLIP, **kw)


def test_forward_from_the_first_frame_is_pcvos_segment(lite, video):
    frames, masks = video
    s = _session(lite, frames)
    s.set_mask(0, masks[0])
    out = dict(s.propagate(0, direction="forward", until="end"))
    assert sorted(out) == list(range(1, T))
    ref = pcvos.segment(lite, frames, {0: masks[0]}, clip_length=CLIP)
    for i in range(T):
        assert np.array_equal(s.labels(i), ref[i]), i


@pytest.mark.parametrize("direction", ["backward", "both"])
def test_backward_on_the_reversed_video_equals_forward(lite, video, direction):
    frames, masks = video
    start = 0 if direction == "backward" else 5
    keys = {start: masks[start], 12: masks[12], 17: masks[17]}  # runs pass through keyframes
    fwd = _session(lite, frames)
    rev = _session(lite, frames[::-1].copy())
    for k, m in keys.items():
        fwd.set_mask(k, m)
        rev.set_mask(T - 1 - k, m)
    fwd_out = list(
        fwd.propagate(start, direction="forward" if direction == "backward" else "both", until="end")
    )
    rev_out = list(rev.propagate(T - 1 - start, direction=direction, until="end"))
    assert len(fwd_out) == len(rev_out) > 0
    fwd_d = dict(fwd_out)
    rev_d = dict(rev_out)
    assert sorted(fwd_d) == sorted(T - 1 - i for i in rev_d)
    for i, lab in fwd_d.items():
        assert np.array_equal(lab, rev_d[T - 1 - i]), i  # exactly, not approximately
    if direction == "backward":  # same processing order, mirrored
        assert [i for i, _ in fwd_out] == [T - 1 - i for i, _ in rev_out]


def test_until_keyframe_touches_exactly_the_frames_between_and_keyframes_never_change(lite, video):
    frames, masks = video
    s = _session(lite, frames)
    for k in (2, 9, 15):
        s.set_mask(k, masks[k])
    assert s.keyframes == [2, 9, 15] and s.object_ids == [1, 2]
    assert s.plan(9) == [10, 11, 12, 13, 14, 8, 7, 6, 5, 4, 3]
    touched = [i for i, _ in s.propagate(9)]
    assert touched == s.plan(9)
    for i in (0, 1, 16, 17, 18, 19):
        assert s.labels(i) is None
    touched = [i for i, _ in s.propagate(9, until="end")]
    assert touched == [10, 11, 12, 13, 14, 16, 17, 18, 19, 8, 7, 6, 5, 4, 3, 1, 0]
    assert touched == s.plan(9, until="end")
    assert [i for i, _ in s.propagate(15, direction="forward")] == [16, 17, 18, 19]
    assert [i for i, _ in s.propagate(2, direction="backward", until="end")] == [1, 0]
    for k in (2, 9, 15):
        assert np.array_equal(s.labels(k), masks[k])
    assert all(s.labels(i) is not None for i in range(T))


def test_a_keyframe_holds_exactly_its_map_and_new_objects_may_start_anywhere(lite, video):
    frames, masks = video
    s = _session(lite, frames)
    first = np.where(masks[0] == 1, 1, 0).astype(np.uint8)
    later = np.where(masks[10] > 0, masks[10] * 3, 0).astype(np.int64)  # ids 3 and 6, int64
    s.set_mask(0, first)
    s.set_mask(10, later)
    assert s.object_ids == [1, 3, 6]
    s.propagate(0, until="end")  # nothing happens until the iterator is consumed
    assert s.labels(5) is None
    for _ in s.propagate(0, until="end"):
        pass
    assert np.array_equal(s.labels(0), first) and np.array_equal(s.labels(10), later.astype(np.uint8))
    assert set(np.unique(s.labels(15))) <= {0, 1, 3, 6}
    mask = s.labels(5)
    held = mask.copy()
    mask[:] = 7  # a copy: the session is not changed through it (whatever the model predicted there)
    assert np.array_equal(s.labels(5), held)


def test_objects_reprojects_only_those_objects(lite, video):
    frames, masks = video
    s = _session(lite, frames)
    s.set_mask(0, masks[0])
    s.set_mask(T - 1, masks[T - 1])
    list(s.propagate(0, direction="forward"))
    before = {i: s.labels(i) for i in range(1, T - 1)}
    s.set_mask(8, masks[8])  # a correction
    out = dict(s.propagate(8, objects=[2]))
    assert sorted(out) == [i for i in range(1, T - 1) if i != 8]
    # what object 2 claims: the same run on keyframes that hold object 2 alone
    only2 = _session(lite, frames)
    for k in (0, 8, T - 1):
        only2.set_mask(k, np.where(masks[k] == 2, 2, 0).astype(np.uint8))
    claims = dict(only2.propagate(8))
    changed = 0
    for i, lab in out.items():
        expected = before[i].copy()
        expected[expected == 2] = 0
        expected[claims[i] == 2] = 2
        assert np.array_equal(lab, expected), i
        assert np.array_equal(lab[(lab != 2) & (before[i] != 2)], before[i][(lab != 2) & (before[i] != 2)])
        changed += int((lab != before[i]).sum())
    assert changed > 0  # the correction did move object 2 somewhere
    assert np.array_equal(s.labels(8), masks[8])


def test_cancel_from_another_thread_leaves_each_frame_old_or_fully_updated(lite, video):
    frames, masks = video
    ref = _session(lite, frames)
    ref.set_mask(0, masks[0])
    full = dict(ref.propagate(0, direction="forward"))

    s = _session(lite, frames)
    s.set_mask(0, masks[0])
    first_done = threading.Event()
    go_on = threading.Event()
    seen: list[int] = []
    errors: list[BaseException] = []

    def worker():
        try:
            for i, _ in s.propagate(0, direction="forward"):
                seen.append(i)
                first_done.set()
                go_on.wait(timeout=30)
        except BaseException as err:  # reported by the main thread
            errors.append(err)
        finally:
            first_done.set()

    th = threading.Thread(target=worker)
    th.start()
    assert first_done.wait(timeout=120)
    assert s.running
    with pytest.raises(RuntimeError, match="another propagation"):
        next(s.propagate(0, direction="forward"))
    mid = [s.labels(i) for i in range(T)]  # read from this thread while the run waits
    s.cancel()
    go_on.set()
    th.join(timeout=120)
    assert not th.is_alive() and not errors and not s.running
    # it stopped within the clip it was in: at most the first clip's frames came out
    assert seen == list(range(1, CLIP + 1))
    for i in range(1, T):
        lab = s.labels(i)
        assert lab is None or np.array_equal(lab, full[i]), i
        assert (mid[i] is None) == (lab is None)
    # a new run after a cancel works and finishes the job
    list(s.propagate(0, direction="forward"))
    assert all(np.array_equal(s.labels(i), full[i]) for i in range(1, T))


def _write_folder(folder: Path, frames: np.ndarray) -> None:
    folder.mkdir()
    for i, f in enumerate(frames):
        Image.fromarray(f).save(folder / f"{i}.png")  # natural order: 10.png after 9.png


@pytest.mark.parametrize("kind", ["folder", "video"])
def test_path_backed_session_holds_only_a_few_frames(lite, video, tmp_path, kind):
    frames, masks = video
    if kind == "folder":
        path = tmp_path / "frames"
        _write_folder(path, frames)
        decoded = frames
    else:
        path = tmp_path / "clip.mp4"
        with VideoWriter(path, fps=10, size=frames.shape[1:3]) as w:
            for f in frames:
                w.write(f)
        decoded = np.stack(list(VideoReader(path)))  # lossy: compare with what decodes
    cap = 4
    s = _session(lite, path, cache_frames=cap)
    assert s.num_frames == T and s.size == frames.shape[1:3]
    s.set_mask(T - 1, masks[T - 1])
    s.set_mask(0, masks[0])
    ref = _session(lite, decoded)
    ref.set_mask(T - 1, masks[T - 1])
    ref.set_mask(0, masks[0])
    peak = 0
    for _ in s.propagate(T - 1, direction="backward"):  # backward: reads by seeking
        peak = max(peak, s._frames.cached)
    for i, lab in ref.propagate(T - 1, direction="backward"):
        assert np.array_equal(s.labels(i), lab), i
    assert 0 < peak <= cap


def test_bad_input(lite, video):
    frames, masks = video
    s = _session(lite, frames)
    with pytest.raises(ValueError, match="out of range"):
        s.set_mask(T, masks[0])
    with pytest.raises(ValueError, match="out of range"):
        s.labels(-1)
    with pytest.raises(ValueError, match="size"):
        s.set_mask(0, masks[0][:-1])
    with pytest.raises(ValueError, match="dtype"):
        s.set_mask(0, masks[0].astype(np.float32))
    with pytest.raises(ValueError, match="0..255"):
        s.set_mask(0, masks[0].astype(np.int32) * 300)
    s.set_mask(4, masks[4])
    with pytest.raises(ValueError, match="holds no mask"):
        s.propagate(3)
    with pytest.raises(ValueError, match="unknown object id 7"):
        s.propagate(4, objects=[1, 7])
    with pytest.raises(ValueError, match="direction"):
        s.propagate(4, direction="sideways")
    with pytest.raises(ValueError, match="until"):
        s.plan(4, until="never")
    with pytest.raises(ValueError, match="frames"):
        pcvos.Session(lite, frames[..., 0])
    empty = _session(lite, frames)
    empty.set_mask(0, np.zeros_like(masks[0]))
    with pytest.raises(ValueError, match="no object"):
        empty.propagate(0)


@pytest.mark.parametrize(
    "name", ["clip_length", "top_k", "memory_every", "max_memory_frames", "size", "cache_frames"]
)
@pytest.mark.parametrize("value", [2.5, 3.0, True, "3"])
def test_counts_are_whole_numbers(lite, video, tmp_path, name, value):
    """Session(..., clip_length=2.5) ran the whole video as one clip, past the 50-frame cap."""
    frames, _ = video
    with pytest.raises(ValueError, match=name):
        pcvos.Session(lite, frames, **{"clip_length": CLIP, name: value})


def test_label_255_is_void_not_an_object(lite, video):
    """One rule with Segmenter.add_mask, pcvos segment and the studio: 255 is background, not object 255."""
    frames, masks = video
    s = _session(lite, frames)
    given = masks[0].copy()
    given[:5] = 255
    s.set_mask(0, given)
    expected = np.where(given == 255, 0, given)
    assert s.object_ids == sorted(int(i) for i in np.unique(expected) if i) and 255 not in s.object_ids
    assert np.array_equal(s.labels(0), expected)
    s.set_labels(1, given)
    assert np.array_equal(s.labels(1), expected)
    with pytest.raises(ValueError, match="unknown object id 255"):
        s.propagate(0, objects=[255])
    plain = _session(lite, frames)
    plain.set_mask(0, expected)
    assert [int(t) for t, _ in s.propagate(0, until="end")][:3] == [1, 2, 3]
    assert all(np.array_equal(s.labels(t), lab) for t, lab in plain.propagate(0, until="end"))


def test_a_changed_keyframe_is_re_encoded(lite, video):
    frames, masks = video
    s = _session(lite, frames)
    s.set_mask(6, masks[6])
    list(s.propagate(6))  # encodes keyframe 6's memory
    fixed = np.where(masks[6] == 1, 1, 0).astype(np.uint8)
    s.set_mask(6, fixed)  # the user changes it: the old memory must go
    again = dict(s.propagate(6))
    fresh = _session(lite, frames)
    fresh.set_mask(6, fixed)
    for i, lab in fresh.propagate(6):
        assert np.array_equal(again[i], lab), i
    assert not any((again[i] == 2).any() for i in again)


def test_set_labels_restores_work_without_making_keyframes(lite, video):
    frames, masks = video
    s = _session(lite, frames)
    s.set_mask(0, masks[0])
    s.set_labels(5, masks[5])
    assert s.keyframes == [0] and np.array_equal(s.labels(5), masks[5])
    with pytest.raises(ValueError, match="is a keyframe"):
        s.set_labels(0, masks[0])
    only1 = dict(s.propagate(0, direction="forward", until="end", objects=[1]))
    # object 2 was only in the restored labels of frame 5: it stays where object 1 does not claim
    keep = (masks[5] == 2) & (only1[5] != 1)
    assert keep.any() and (only1[5][keep] == 2).all()
    assert not any((only1[i] == 2).any() for i in only1 if i != 5)


def test_corrections_benchmark_runs(davis_root, tmp_path):
    import importlib.util

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "corrections.py"
    spec = importlib.util.spec_from_file_location("corrections_benchmark", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    assert (
        mod.main(
            [
                "--davis-root",
                str(davis_root),
                "--sequences",
                "bear",
                "--max-frames",
                "14",
                "--size",
                "96",
                "--out",
                str(tmp_path),
            ]
        )
        == 0
    )
    table = (tmp_path / "corrections.md").read_text()
    assert "GT correction every 10 frames" in table and "one fix between keyframes" not in table  # 14 < 20
    assert len(list((tmp_path / "every_10" / "bear").glob("*.png"))) == 14
