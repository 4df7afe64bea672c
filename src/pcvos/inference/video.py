"""Segment a user's video (file or frame folder) from mask files, writing results as they come.

This is the job behind ``pcvos segment``; it is usable from Python too (:func:`segment_video`).
"""
from __future__ import annotations

import json
import logging
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from pcvos.data.frames import FrameFolder, VideoWriter, open_frames
from pcvos.data.io_utils import atomic_write, save_indexed_png
from pcvos.data.masks import parse_mask, read_color_mask, resize_labels
from pcvos.data.overlay import overlay as draw_overlay
from pcvos.data.overlay import rgba_cutout
from pcvos.inference.api import Segmenter
from pcvos.inference.memory_store import DEFAULT_MAX_MEMORY_FRAMES
from pcvos.model.network import PCVOS

log = logging.getLogger("pcvos")
MAX_OBJECTS = 254  # 255 is the void label of the DAVIS format


class InputError(ValueError):
    """Bad user input; the message names the file and what to do about it."""


@dataclass
class MaskSpec:
    """A mask file and the frame it belongs to."""

    path: Path
    frame: int = 0


@dataclass
class SegmentOptions:
    clip_length: int = 5
    memory_every: int | None = None
    size: int | None = 480
    top_k: int = 20
    max_memory_frames: int | None = DEFAULT_MAX_MEMORY_FRAMES
    device: str | None = None
    precision: str = "fp32"
    overwrite: bool = False
    overlay: Path | None = None
    alpha: Path | None = None
    quiet: bool = False
    backward: bool = False  # fill the frames before each object's first mask by backward propagation
    extra: dict[str, Any] = field(default_factory=dict)


def _is_colour(path: Path) -> bool:
    with Image.open(path) as im:
        return im.mode in ("RGB", "RGBA", "RGBX")


def load_masks(specs: list[MaskSpec], frame_size: tuple[int, int], num_frames: int | None
               ) -> tuple[dict[int, np.ndarray], list[dict[str, Any]]]:
    """Read mask files into {frame: label map at ``frame_size``} and describe the objects found.

    Indexed masks keep their ids (the same id in two files is the same object); each binary mask
    is a new object; colour masks share one colour table (the same colour is the same object).
    """
    masks: dict[int, np.ndarray] = {}
    objects: list[dict[str, Any]] = []
    colours: np.ndarray | None = None
    colour_ids: dict[int, int] = {}  # colour-table row -> object id
    used: set[int] = set()
    h, w = frame_size
    for spec in specs:
        path = spec.path
        if not path.is_file():
            raise InputError(f"{path}: mask file not found")
        if spec.frame < 0 or (num_frames is not None and spec.frame >= num_frames):
            raise InputError(f"{path}: --mask-frame {spec.frame} is beyond the video "
                             f"({num_frames} frames, numbered from 0)")
        try:
            if _is_colour(path):
                labels, colours = read_color_mask(path, colours)
                kind = "colour mask"
            else:
                labels, kind = parse_mask(path)
                kind = kind.split(";")[0]
        except ValueError as exc:
            raise InputError(str(exc)) from exc
        except OSError as exc:
            raise InputError(f"{path}: cannot read the mask ({exc})") from exc
        labels = np.where(labels == 255, 0, labels).astype(np.uint8)  # void is not an object
        ids = [int(i) for i in np.unique(labels) if i != 0]
        if not ids:
            raise InputError(f"{path}: the mask holds no object (every pixel is background); "
                             "paint the object(s) with non-zero values")
        if labels.shape != (h, w):
            mh, mw = labels.shape
            if abs(mh * w - mw * h) > max(h, w):  # aspect ratios differ by more than a pixel
                raise InputError(f"{path}: mask is {mw}x{mh} but the frames are {w}x{h} (a different "
                                 "aspect ratio); save the mask at the video's size")
            warnings.warn(f"{path}: mask is {mw}x{mh}, frames are {w}x{h}; resized with nearest neighbour",
                          stacklevel=2)
            labels = resize_labels(labels, (h, w))
        remap: dict[int, int] = {}
        if kind == "colour mask":
            for i in ids:
                remap[i] = colour_ids.setdefault(i, i)
        elif "binary" in kind or (kind.startswith("grayscale") and ids == [1]):
            new = max(used, default=0) + 1
            remap[1] = new
        else:
            remap = {i: i for i in ids}
        out = np.zeros_like(labels)
        for src, dst in remap.items():
            out[labels == src] = dst
        for src, dst in remap.items():
            if dst not in used:
                objects.append({"id": dst, "first_frame": spec.frame, "mask": str(path), "kind": kind})
                used.add(dst)
        if len(used) > MAX_OBJECTS:
            raise InputError(f"{path}: more than {MAX_OBJECTS} objects in the masks; the indexed PNG "
                             "output format holds at most 254")
        if spec.frame in masks:  # several files for one frame: later files paint over earlier ones
            prev = masks[spec.frame]
            out = np.where(out > 0, out, prev)
        masks[spec.frame] = out
    return masks, objects


def _check_output(out_dir: Path, overwrite: bool) -> None:
    if out_dir.exists() and not out_dir.is_dir():
        raise InputError(f"{out_dir}: exists and is not a folder; choose another --out")
    if out_dir.is_dir() and (any(out_dir.glob("*.png")) or (out_dir / "summary.json").exists()):
        if not overwrite:
            raise InputError(f"{out_dir}: already holds results; pass --overwrite to replace them "
                             "or choose another --out")
        for p in out_dir.glob("*.png"):
            p.unlink()


def _device(name: str | None) -> torch.device:
    if name in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except RuntimeError as exc:
        raise InputError(f"--device {name}: not a device name (use cpu, cuda, cuda:1, auto)") from exc
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise InputError(f"--device {name}: CUDA is not available on this machine; use --device cpu")
    return dev


def _with_backward_fill(seg: Segmenter, model: PCVOS, source: Any, input_path: Path,
                        mask_maps: dict[int, np.ndarray], objects: list[dict[str, Any]],
                        opt: SegmentOptions, size: int | None, device: torch.device,
                        pending: dict[int, np.ndarray] | None) -> Iterator[tuple[int, np.ndarray]]:
    """``seg.process`` with the frames before each object's first mask filled backward.

    The forward pass is the plain one. Then the objects first given at a frame f > 0 are
    propagated backward from f to frame 0 (:class:`pcvos.Session`, ``objects=`` those ids; its
    keyframes are the mask frames from f on, holding the forward results there): on those frames
    the other objects keep their labels unless a filled object claims the pixel, and given masks
    win at their own frames. Labels of the whole video are held until the end; results come out
    in frame order, with the frames read again (into ``pending``) for the overlay and cut-outs.
    """
    from pcvos.inference.session import Session

    results = dict(seg.process(iter(source)))
    first: dict[int, list[int]] = {}
    for o in objects:
        first.setdefault(int(o["first_frame"]), []).append(int(o["id"]))
    for f in sorted(k for k in first if k > 0):
        session = Session(model, input_path, clip_length=opt.clip_length, memory_every=opt.memory_every,
                          pmm_segment=seg.config.pmm_segment, refine=seg.config.refine, top_k=opt.top_k,
                          size=size, max_memory_frames=opt.max_memory_frames, device=device,
                          precision=opt.precision)
        for k in mask_maps:
            if k >= f:
                session.set_mask(k, results[k])
        for j in range(f):
            session.set_labels(j, results[j])
        for j, labels in session.propagate(f, direction="backward", until="end", objects=first[f]):
            results[j] = labels
        for k, given in mask_maps.items():
            if k < f:
                results[k] = np.where(given > 0, given, results[k])
    frames = iter(source) if pending is not None else None
    for index in range(len(results)):
        if frames is not None:
            pending[index] = next(frames)
        yield index, results.pop(index)


def segment_video(model: PCVOS, input_path: str | Path, masks: list[MaskSpec], out_dir: str | Path,
                  options: SegmentOptions | None = None,
                  progress: Callable[[int, int | None], None] | None = None) -> dict[str, Any]:
    """Segment ``input_path`` (a video file or a folder of frames) and write the results.

    Writes one indexed PNG per frame into ``out_dir`` (each atomically, as soon as its clip is
    done), an overlay video and RGBA cut-outs when asked, and ``summary.json`` last. Bad input
    raises :class:`InputError` before anything is written; a video that breaks part-way raises
    ``VideoDecodeError`` after the frames before the break were written. Returns the summary.
    """
    opt = options or SegmentOptions()
    input_path, out_dir = Path(input_path), Path(out_dir)
    device = _device(opt.device)
    try:
        source = open_frames(input_path, strict=True)  # a truncated file ends in an error, not a short result
    except (FileNotFoundError, IsADirectoryError, ValueError) as exc:
        raise InputError(str(exc)) from exc
    try:
        num_frames: int | None = len(source)
    except TypeError:
        num_frames = None
    if num_frames == 0:
        raise InputError(f"{input_path}: no frames")
    h, w = source.size
    mask_maps, objects = load_masks(masks, (h, w), num_frames)
    _check_output(out_dir, opt.overwrite)
    for extra in (opt.overlay,):
        if extra is not None and extra.exists() and not opt.overwrite:
            raise InputError(f"{extra}: already exists; pass --overwrite to replace it")
    if opt.alpha is not None and opt.alpha.is_dir() and any(opt.alpha.iterdir()) and not opt.overwrite:
        raise InputError(f"{opt.alpha}: already holds files; pass --overwrite to replace them")

    if isinstance(source, FrameFolder):
        names = [Path(n).stem for n in source.names]
    else:
        names = None
    seg = Segmenter(model, clip_length=opt.clip_length, memory_every=opt.memory_every,
                    refine=model.has_refiner, pmm_segment=5 if model.has_refiner else None, top_k=opt.top_k,
                    size=opt.size if opt.size is not None and opt.size < min(h, w) else None,
                    max_memory_frames=opt.max_memory_frames, device=device, precision=opt.precision)
    for frame_index, m in mask_maps.items():
        seg.add_mask(frame_index, m)

    pending: dict[int, np.ndarray] = {}

    def frames() -> Iterator[np.ndarray]:
        for i, f in enumerate(source):
            if opt.overlay is not None or opt.alpha is not None:
                pending[i] = f
            yield f

    out_dir.mkdir(parents=True, exist_ok=True)
    writer = VideoWriter(opt.overlay, fps=source.fps or 25.0) if opt.overlay is not None else None
    ids = sorted(o["id"] for o in objects)
    start = time.perf_counter()
    done = 0
    try:
        keep = pending if opt.overlay is not None or opt.alpha is not None else None
        results = (_with_backward_fill(seg, model, source, input_path, mask_maps, objects, opt, seg.size, device, keep)
                   if opt.backward else seg.process(frames()))
        for index, labels in results:
            name = names[index] if names is not None else f"{index:05d}"
            save_indexed_png(out_dir / f"{name}.png", labels)
            frame = pending.pop(index, None)
            if writer is not None:
                writer.write(draw_overlay(frame, labels))
            if opt.alpha is not None:
                for obj in ids:
                    cut = rgba_cutout(frame, labels, obj)
                    path = opt.alpha / f"{obj:03d}" / f"{name}.png"
                    path.parent.mkdir(parents=True, exist_ok=True)
                    atomic_write(path, lambda tmp, cut=cut: Image.fromarray(cut, "RGBA").save(tmp, format="PNG"))
            done += 1
            if progress is not None:
                progress(done, num_frames)
        if writer is not None:
            writer.close()
    except BaseException:
        if writer is not None:
            writer.abort()
        raise
    seconds = time.perf_counter() - start
    summary = {
        "input": str(input_path),
        "frames": done,
        "size": [w, h],
        "objects": objects,
        "seconds": round(seconds, 3),
        "fps": round(done / seconds, 3) if seconds > 0 else None,
        "settings": {"clip_length": opt.clip_length, "memory_every": opt.memory_every or opt.clip_length,
                     "processing_size": opt.size, "top_k": opt.top_k, "max_memory_frames": opt.max_memory_frames,
                     "refine": model.has_refiner, "device": str(device), "precision": opt.precision,
                     **opt.extra},
        "outputs": {"masks": str(out_dir), "overlay": str(opt.overlay) if opt.overlay else None,
                    "alpha": str(opt.alpha) if opt.alpha else None},
    }
    atomic_write(out_dir / "summary.json", lambda tmp: tmp.write_text(json.dumps(summary, indent=2)))
    return summary

