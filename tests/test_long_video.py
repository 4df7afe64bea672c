"""Long videos by default: a bounded memory that changes nothing on short videos, and a bounded clip."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

import pcvos
from pcvos.cli import build_parser, main
from pcvos.inference.engine import MAX_CLIP_LENGTH, InferenceConfig
from pcvos.inference.memory_store import (
    DAVIS_LONGEST_FRAMES,
    DEFAULT_MAX_MEMORY_FRAMES,
    DEFAULT_MEMORY_INTERVAL,
    MemoryStore,
)

# per-frame memory without ICR: the most memory frames a video of a given length can make
PER_FRAME = dict(clip_length=1, memory_every=1, refine=False, pmm_segment=None)


@pytest.fixture(scope="module")
def moving_square() -> tuple[np.ndarray, np.ndarray]:
    """A textured square drifting over a textured background (real motion, so the reads vary)."""
    rng = np.random.default_rng(0)
    background = rng.integers(0, 256, (64, 112, 3), dtype=np.uint8)
    patch = rng.integers(0, 256, (24, 24, 3), dtype=np.uint8)
    frames, labels = [], []
    for t in range(12):
        f = background.copy()
        y, x = 10 + 2 * t, 8 + 4 * t
        f[y : y + 24, x : x + 24] = patch
        lab = np.zeros(f.shape[:2], np.uint8)
        lab[y : y + 24, x : x + 24] = 1
        frames.append(f)
        labels.append(lab)
    return np.stack(frames), np.stack(labels)


def _record_memory_sizes(monkeypatch) -> list[int]:
    sizes: list[int] = []
    add = MemoryStore.add

    def recording(self, *args, **kwargs):
        add(self, *args, **kwargs)
        sizes.append(len(self.frames))

    monkeypatch.setattr(MemoryStore, "add", recording)
    return sizes


# real frames at a small processing size: the memory schedule does not depend on the size
SMALL = 64


def _looped_bear(davis_root, length: int) -> tuple[np.ndarray, np.ndarray]:
    """DAVIS ``bear`` played forward and backward to ``length`` frames (as benchmarks/long_video.py),
    downscaled 4x, with its first mask."""
    seq = "bear"
    paths = sorted((davis_root / "JPEGImages/480p" / seq).glob("*.jpg"))
    period = 2 * len(paths) - 2
    order = [t % period if t % period < len(paths) else period - t % period for t in range(length)]
    frames = [np.asarray(Image.open(p).convert("RGB").reduce(4)) for p in paths]
    first = Image.open(davis_root / "Annotations/480p" / seq / "00000.png")
    mask = np.asarray(first.resize(frames[0].shape[1::-1], Image.NEAREST)) > 0
    return np.stack([frames[t] for t in order]), mask.astype(np.uint8)


def _record_reads(monkeypatch) -> list[tuple[int, int, int]]:
    """(memory frames, memory rows, first memory frame's index) at every read."""
    reads: list[tuple[int, int, int]] = []
    read = MemoryStore.read

    def recording(self, *args, **kwargs):
        reads.append((len(self.frames), self.rows, self.frames[0].index))
        return read(self, *args, **kwargs)

    monkeypatch.setattr(MemoryStore, "read", recording)
    return reads


def test_default_cap_is_what_the_longest_davis_video_makes(davis_root, monkeypatch):
    """A DAVIS-length real video at the default schedule keeps every memory frame under the
    default cap, and so gives exactly the unbounded memory's result; the cap is that tight."""
    assert InferenceConfig().memory_interval == DEFAULT_MEMORY_INTERVAL
    model = pcvos.load_model()
    frames, mask = _looped_bear(davis_root, DAVIS_LONGEST_FRAMES)
    sizes = _record_memory_sizes(monkeypatch)
    default = pcvos.segment(model, frames, {0: mask}, size=SMALL, output="probs")
    assert max(sizes) == DEFAULT_MAX_MEMORY_FRAMES  # reached, nothing dropped: the cap is not looser
    unbounded = pcvos.segment(model, frames, {0: mask}, size=SMALL, output="probs", max_memory_frames=None)
    assert np.array_equal(default, unbounded)


def test_read_stays_bounded_on_a_long_video(davis_root, monkeypatch):
    """With the defaults, a real video making three times the cap in memory frames reads a memory
    that fills up to the cap and then stays there: the read, and so time per frame, is flat."""
    length = 3 * DEFAULT_MAX_MEMORY_FRAMES * DEFAULT_MEMORY_INTERVAL
    frames, mask = _looped_bear(davis_root, length)
    reads = _record_reads(monkeypatch)
    seg = pcvos.Segmenter(pcvos.load_model(), size=SMALL)
    seg.add_mask(0, mask)
    labels = np.stack([lab for _, lab in seg.process(frames)])
    assert len(labels) == length
    counts = [n for n, _, _ in reads]
    assert DEFAULT_MAX_MEMORY_FRAMES in counts  # the video outgrows the cap
    full = counts.index(DEFAULT_MAX_MEMORY_FRAMES)
    assert full < len(counts) / 3 and set(counts[full:]) == {DEFAULT_MAX_MEMORY_FRAMES}
    rows_per_frame = reads[0][1]  # the given mask's frame alone
    assert max(r for _, r, _ in reads) == DEFAULT_MAX_MEMORY_FRAMES * rows_per_frame
    # the annotated frame stays to the end, and the object is still tracked there
    assert {first for _, _, first in reads} == {0} and labels[-1].any()


def test_memory_is_bounded_by_default():
    assert InferenceConfig().max_memory_frames == DEFAULT_MAX_MEMORY_FRAMES
    assert InferenceConfig().memory_eviction == "usage"
    parser = build_parser()
    args = parser.parse_args(["segment", "in.mp4", "--mask", "m.png"])
    assert args.max_memory_frames == DEFAULT_MAX_MEMORY_FRAMES
    args = parser.parse_args(["infer", "davis", "--davis-root", "d", "--out", "o"])
    assert args.max_memory_frames == DEFAULT_MAX_MEMORY_FRAMES


def test_default_equals_unbounded_on_short_videos(pcvos_model, moving_square, monkeypatch):
    frames, labels = moving_square
    sizes = _record_memory_sizes(monkeypatch)
    default = pcvos.segment(pcvos_model, frames, {0: labels[0]}, output="probs", **PER_FRAME)
    assert max(sizes) == len(frames) - 1  # every frame but the last became memory: nothing dropped
    unbounded = pcvos.segment(
        pcvos_model, frames, {0: labels[0]}, output="probs", max_memory_frames=None, **PER_FRAME
    )
    assert np.array_equal(default, unbounded)


@pytest.mark.parametrize("eviction", ["usage", "oldest"])
def test_long_video_memory_stays_within_the_cap(pcvos_model, moving_square, monkeypatch, eviction):
    frames, labels = moving_square
    cap = 3
    sizes = _record_memory_sizes(monkeypatch)
    seg = pcvos.Segmenter(pcvos_model, max_memory_frames=cap, output="probs", **PER_FRAME)
    seg.config.memory_eviction = eviction
    seg.add_mask(0, labels[0])
    seg.add_mask(6, labels[6])  # an annotated frame mid-video stays too
    capped = np.stack([p for _, p in seg.process(frames)], axis=1)
    assert max(sizes) == cap and len(sizes) == len(frames) - 1
    full = pcvos.segment(
        pcvos_model, frames, {0: labels[0], 6: labels[6]}, output="probs", max_memory_frames=None, **PER_FRAME
    )
    # identical until the cap bites (frame cap + 1 is the first to read a memory with a frame dropped)
    assert np.abs(capped[:, : cap + 1] - full[:, : cap + 1]).max() < 1e-6
    assert np.abs(capped - full).max() > 1e-6


def test_clip_length_is_capped(pcvos_model):
    frames = np.zeros((2, 32, 32, 3), np.uint8)
    mask = np.ones((32, 32), np.uint8)
    with pytest.raises(ValueError, match=f"at most {MAX_CLIP_LENGTH}"):
        pcvos.segment(pcvos_model, frames, {0: mask}, clip_length=MAX_CLIP_LENGTH + 1)
    pcvos.segment(pcvos_model, frames, {0: mask}, clip_length=MAX_CLIP_LENGTH)  # the cap itself is fine


def test_cli_refuses_a_huge_clip_length(tmp_path, capsys):
    folder = tmp_path / "frames"
    folder.mkdir()
    rng = np.random.default_rng(1)
    for i in range(3):
        Image.fromarray(rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)).save(folder / f"{i:05d}.png")
    mask = np.zeros((48, 64), np.uint8)
    mask[10:30, 20:40] = 1
    Image.fromarray(mask * 255).save(tmp_path / "mask.png")
    out = tmp_path / "out"
    code = main(
        [
            "segment",
            str(folder),
            "--mask",
            str(tmp_path / "mask.png"),
            "--out",
            str(out),
            "--clip-length",
            "1000",
            "--quiet",
        ]
    )
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert len(err.splitlines()) == 1 and f"at most {MAX_CLIP_LENGTH}" in err and "1000" in err
    assert not out.exists()


def test_long_video_benchmark_runs_and_reports(tmp_path, capsys):
    import importlib.util
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "benchmarks" / "long_video.py"
    spec = importlib.util.spec_from_file_location("long_video", script)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    assert bench.ping_pong(4, 9) == [0, 1, 2, 3, 2, 1, 0, 1, 2]
    root = tmp_path / "davis"
    (root / "JPEGImages/480p/sq").mkdir(parents=True)
    (root / "Annotations/480p/sq").mkdir(parents=True)
    rng = np.random.default_rng(2)
    for t in range(4):
        Image.fromarray(rng.integers(0, 256, (48, 80, 3), dtype=np.uint8)).save(
            root / f"JPEGImages/480p/sq/{t:05d}.jpg"
        )
        m = np.zeros((48, 80), np.uint8)
        m[10:30, 10 + 5 * t : 40 + 5 * t] = 1
        Image.fromarray(m).save(root / f"Annotations/480p/sq/{t:05d}.png")
    out = tmp_path / "runs"
    common = [
        "--davis-root",
        str(root),
        "--sequence",
        "sq",
        "--frames",
        "12",
        "--window",
        "6",
        "--size",
        "48",
        "--clip-length",
        "2",
        "--out",
        str(out),
    ]
    bench.main(["run", "--policy", "uncapped", *common])
    bench.main(["run", "--policy", "usage", "--max-memory-frames", "2", *common])
    capsys.readouterr()
    bench.main(["report", "--out", str(out), "--davis-root", str(root)])
    table = capsys.readouterr().out
    assert "| 6 |" in table and "| 12 |" in table
    assert "| uncapped | None | 12 | " in table and "| usage | 2 | 12 | " in table
    assert "The cap binds from frame 5 on" in table
