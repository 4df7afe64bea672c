"""Segment a user's video (file or frame folder) from mask files, writing results as they come.

This is the job behind ``pcvos segment``; it is usable from Python too (:func:`segment_video`).
"""

from __future__ import annotations

import functools
import json
import logging
import re
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from pcvos.cli_types import resolve_device
from pcvos.data.export_formats import (
    COCO_NAME,
    EXPORT_FORMATS,
    YOLO_FOLDER,
    YOLO_NAMES,
    CocoBuilder,
    write_coco_json,
    write_yolo_frame,
    write_yolo_names,
)
from pcvos.data.frames import VIDEO_EXTENSIONS, FrameFolder, VideoWriter, open_frames
from pcvos.data.io_utils import (
    MANIFEST_NAME,
    atomic_write,
    atomic_write_text,
    check_writable,
    read_manifest,
    save_indexed_png,
    write_manifest,
)
from pcvos.data.masks import parse_mask, read_color_mask, resize_labels
from pcvos.data.overlay import overlay as draw_overlay
from pcvos.data.overlay import rgba_cutout
from pcvos.inference.adapt import adapt as adapt_model
from pcvos.inference.adapt import read_keyframes
from pcvos.inference.api import Segmenter
from pcvos.inference.engine import Precision
from pcvos.inference.memory_store import DEFAULT_MAX_MEMORY_FRAMES
from pcvos.inference.sizing import _processing_size, _resize_mask
from pcvos.model.network import PCVOS

log = logging.getLogger("pcvos")
MAX_OBJECTS = 254  # 255 is the void label of the DAVIS format
#: Most objects one colour mask may hold: more distinct colours (after anti-aliased edges are
#: merged) means a photo or a soft mask, whose objects would cost minutes and gigabytes for nothing.
MAX_COLOUR_MASK_OBJECTS = 64
SUMMARY_NAME = "summary.json"
# what a video's mask files and cut-outs are called, for claims on names before the length is known
_VIDEO_MASK_NAME = re.compile(r"^\d{5,}\.png$")
_VIDEO_CUTOUT_NAME = re.compile(r"^\d{3}/\d{5,}\.png$")
_VIDEO_MASK_OR_YOLO_NAME = re.compile(rf"^(\d{{5,}}\.png|{YOLO_FOLDER}/\d{{5,}}\.txt)$")


class InputError(ValueError):
    """Bad user input; the message names the file and what to do about it."""


class OutputError(InputError):
    """An output could not be written (read-only folder, full disk); the message names the file."""


@dataclass
class MaskSpec:
    """A mask file and the frame it belongs to."""

    path: Path
    frame: int = 0


@dataclass
class PromptSpec:
    """An object given by a prompt on one frame: its box (x0, y0, x1, y1) in pixels, or None for
    the frame's most salient object (``--mask auto``). Its mask comes from :func:`pcvos.mask_from_prompts`."""

    frame: int = 0
    box: tuple[float, float, float, float] | None = None

    def describe(self) -> str:
        what = "--mask auto" if self.box is None else "--box " + ",".join(f"{v:g}" for v in self.box)
        return what if self.frame == 0 else f"{what} (frame {self.frame})"


#: the folder, inside --out, that holds the masks made from prompts (one indexed PNG per prompted frame)
PROMPT_MASKS_DIR = "prompt_masks"


@dataclass
class SegmentOptions:
    clip_length: int = 5
    memory_every: int | None = None
    size: int | None = 480
    top_k: int = 20
    max_memory_frames: int | None = DEFAULT_MAX_MEMORY_FRAMES
    device: str | None = None
    precision: Precision = "fp32"
    overwrite: bool = False
    overlay: Path | None = None
    alpha: Path | None = None
    quiet: bool = False
    backward: bool = False  # fill the frames before each object's first mask by backward propagation
    adapt: int = 0  # test-time adaptation steps on the annotated frames (pcvos.adapt); 0: off
    adapt_seed: int = 0
    export: tuple[str, ...] = ()  # also write these formats into the output folder: "coco", "yolo"
    extra: dict[str, Any] = field(default_factory=dict)


def _is_colour(path: Path) -> bool:
    with Image.open(path) as im:
        return im.mode in ("RGB", "RGBA", "RGBX")


def _check_survives(path: Path | str, labels: np.ndarray, processing: tuple[int, int]) -> None:
    """Every object of ``labels`` must keep a pixel when resized to the processing size as the API does."""
    if tuple(labels.shape) == processing:
        return
    small = _resize_mask(torch.from_numpy(labels), processing).numpy()
    lost = sorted(set(np.unique(labels).tolist()) - set(np.unique(small).tolist()) - {0})
    if lost:
        pixels = int(np.isin(labels, lost).sum())
        raise InputError(
            f"{path}: object {', '.join(map(str, lost))} ({pixels} pixels) vanishes at the processing "
            f"size {processing[1]}x{processing[0]}; draw it larger, or pass a larger --size "
            "(or --size native)"
        )


def load_masks(
    specs: list[MaskSpec],
    frame_size: tuple[int, int],
    num_frames: int | None,
    processing_size: tuple[int, int] | None = None,
) -> tuple[dict[int, np.ndarray], list[dict[str, Any]]]:
    """Read mask files into {frame: label map at ``frame_size``} and describe the objects found.

    Indexed masks keep their ids (the same id in two files is the same object); each binary mask
    is a new object; colour masks share one colour table (the same colour is the same object).
    Label 255 is void (the DAVIS convention): not an object, read as background. ``num_frames``
    (a count known for sure, else None) bounds ``--mask-frame``; with ``processing_size``
    (height, width) an object too small to survive the downscale is an error.
    """
    masks: dict[int, np.ndarray] = {}
    objects: list[dict[str, Any]] = []
    colours: np.ndarray | None = None
    colour_ids: dict[int, int] = {}  # colour-table row -> object id
    used: set[int] = set()
    h, w = frame_size
    for spec in specs:
        path = spec.path
        if path.is_dir():
            raise InputError(f"{path}: is a folder; --mask takes a mask image file (one --mask per file)")
        if not path.is_file():
            raise InputError(f"{path}: mask file not found")
        if spec.frame < 0:
            raise InputError(f"{path}: --mask-frame {spec.frame} is negative; frames are numbered from 0")
        if num_frames is not None and spec.frame >= num_frames:
            raise InputError(
                f"{path}: --mask-frame {spec.frame} is beyond the video "
                f"({num_frames} frames, numbered from 0)"
            )
        try:
            if _is_colour(path):
                labels, colours = read_color_mask(path, colours)
                kind = "colour mask"
            else:
                labels, kind = parse_mask(path)
                kind = kind.split(";")[0]
        except ValueError as exc:
            raise InputError(str(exc)) from exc
        except (OSError, SyntaxError) as exc:
            raise InputError(f"{path}: cannot read the mask ({exc})") from exc
        except Image.DecompressionBombError as exc:
            raise InputError(f"{path}: image too large to read safely ({exc})") from exc
        labels = np.where(labels == 255, 0, labels).astype(np.uint8)  # void is not an object
        ids = [int(i) for i in np.unique(labels) if i != 0]
        if not ids:
            raise InputError(
                f"{path}: the mask holds no object (every pixel is background); "
                "paint the object(s) with non-zero values"
            )
        if kind == "colour mask" and len(ids) > MAX_COLOUR_MASK_OBJECTS:
            raise InputError(
                f"{path}: colour mask with {len(ids)} distinct colours, more than the "
                f"{MAX_COLOUR_MASK_OBJECTS} objects a colour mask may hold (a photo or a soft mask?); "
                "paint each object one flat colour, or save an indexed PNG"
            )
        if labels.shape != (h, w):
            mh, mw = labels.shape
            if abs(mh * w - mw * h) > max(h, w):  # aspect ratios differ by more than a pixel
                raise InputError(
                    f"{path}: mask is {mw}x{mh} but the frames are {w}x{h} (a different "
                    "aspect ratio); save the mask at the video's size"
                )
            warnings.warn(
                f"{path}: mask is {mw}x{mh}, frames are {w}x{h}; resized with nearest neighbour", stacklevel=2
            )
            labels = resize_labels(labels, (h, w))
        if processing_size is not None:
            _check_survives(path, labels, processing_size)
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
        for dst in remap.values():
            if dst not in used:
                objects.append({"id": dst, "first_frame": spec.frame, "mask": str(path), "kind": kind})
                used.add(dst)
        if len(used) > MAX_OBJECTS:
            raise InputError(
                f"{path}: more than {MAX_OBJECTS} objects in the masks; the indexed PNG "
                "output format holds at most 254"
            )
        if spec.frame in masks:  # several files for one frame: later files paint over earlier ones
            prev = masks[spec.frame]
            out = np.where(out > 0, out, prev)
        masks[spec.frame] = out
    return masks, objects


def prompt_masks(
    prompts: list[PromptSpec],
    source: Any,
    masks: dict[int, np.ndarray],
    objects: list[dict[str, Any]],
    frame_size: tuple[int, int],
    num_frames: int | None,
    processing_size: tuple[int, int] | None = None,
) -> dict[int, np.ndarray]:
    """Add the objects given by ``prompts`` to ``masks`` and ``objects`` (in place).

    Each prompt is a new object (the next free id) whose mask :func:`pcvos.mask_from_prompts` makes
    on its frame; it takes only pixels no mask file gave to another object. Returns {frame: the
    labels of the prompted objects alone}, which is what ``prompt_masks/`` holds.
    """
    if not prompts:
        return {}
    from pcvos.inference.prompts import mask_from_prompts

    for p in prompts:
        if p.frame < 0:
            raise InputError(f"{p.describe()}: frame {p.frame} is negative; frames are numbered from 0")
        if num_frames is not None and p.frame >= num_frames:
            raise InputError(
                f"{p.describe()}: frame {p.frame} is beyond the video ({num_frames} frames, numbered from 0)"
            )
        if p.box is not None:  # checked before any frame is read or the network loaded
            h, w = frame_size
            x0, y0, x1, y1 = p.box
            if not (0 <= x0 < x1 <= w and 0 <= y0 < y1 <= h):
                raise InputError(
                    f"{p.describe()}: the box must lie inside the {w}x{h} frame with x0 < x1 and y0 < y1 "
                    f"(pixels, from the top-left corner, x1 and y1 at most {w} and {h})"
                )
    try:
        images = read_keyframes(source, [p.frame for p in prompts])
    except ValueError as exc:
        raise InputError(str(exc)) from exc
    made: dict[int, np.ndarray] = {}
    used = {int(o["id"]) for o in objects}
    for p in prompts:
        try:
            mask = mask_from_prompts(images[p.frame], box=p.box)
        except ValueError as exc:
            raise InputError(f"{p.describe()}: {exc}") from exc
        labels = masks.get(p.frame)
        free = np.ones(frame_size, dtype=bool) if labels is None else labels == 0
        mask &= free
        if not mask.any():
            fix = (
                "draw the box tighter around the object, or give a mask" if p.box else "give --box or a mask"
            )
            raise InputError(f"{p.describe()}: found no object there on frame {p.frame}; {fix}")
        new = max(used, default=0) + 1
        if new > MAX_OBJECTS:
            raise InputError(
                f"{p.describe()}: more than {MAX_OBJECTS} objects; the indexed PNG format holds 254"
            )
        used.add(new)
        labels = np.zeros(frame_size, dtype=np.uint8) if labels is None else labels.copy()
        labels[mask] = new
        if processing_size is not None:
            _check_survives(p.describe(), np.where(mask, labels, 0).astype(np.uint8), processing_size)
        masks[p.frame] = labels
        own = made.setdefault(p.frame, np.zeros(frame_size, dtype=np.uint8))
        own[mask] = new
        kind = (
            "zero-click (most salient object)"
            if p.box is None
            else "box " + ",".join(f"{v:g}" for v in p.box)
        )
        objects.append({"id": new, "first_frame": p.frame, "mask": None, "kind": kind})
    return made


def _inside(child: Path, parent: Path) -> bool:
    """Whether ``child`` is ``parent`` or lies under it (symlinks resolved)."""
    c, p = child.resolve(), parent.resolve()
    return c == p or p in c.parents


def _files_in(folder: Path, nested: bool) -> set[str]:
    """Relative names of the files in ``folder`` (one level of sub-folders when ``nested``)."""
    if not folder.is_dir():
        return set()
    found = {p.name for p in folder.iterdir() if p.is_file() or p.is_symlink()}
    if nested:
        found |= {f"{d.name}/{p.name}" for d in folder.iterdir() if d.is_dir() for p in d.iterdir()}
    return found - {MANIFEST_NAME}


@dataclass
class _OutputFolder:
    """One output folder: what earlier runs of pcvos wrote there and what this run will write."""

    path: Path
    what: str  # the option that names it, for messages
    planned: set[str]  # names this run writes (all of them when the frame count is known)
    pattern: re.Pattern | None  # names this run may write when the frame count is not known
    nested: bool = False  # files sit one sub-folder down (cut-outs: <id>/<frame>.png)
    owned: set[str] = field(default_factory=set)  # earlier runs' files (from the manifest) still there

    def claims(self, name: str) -> bool:
        return name in self.planned or (self.pattern is not None and self.pattern.match(name) is not None)

    def inspect(self, overwrite: bool, inputs: list[Path]) -> None:
        """Refuse what would destroy a file pcvos did not write, or results without ``--overwrite``."""
        if self.path.exists() and not self.path.is_dir():
            raise InputError(f"{self.path}: exists and is not a folder; choose another {self.what}")
        existing = _files_in(self.path, self.nested)
        recorded = read_manifest(self.path)
        self.owned = existing & recorded
        for path in inputs:  # an input that this run would delete or replace
            try:
                name = str(path.resolve().relative_to(self.path.resolve()))
            except ValueError:
                continue
            if name in self.owned or self.claims(name):
                raise InputError(
                    f"{path}: is an input but also a file this run would replace in {self.what} "
                    f"{self.path}; copy it elsewhere or choose another {self.what}"
                )
        foreign = sorted(n for n in existing - self.owned if self.claims(n))
        if foreign:
            more = f" (and {len(foreign) - 1} more)" if len(foreign) > 1 else ""
            raise InputError(
                f"{self.path / foreign[0]}: exists and pcvos has no record of writing it{more}; "
                f"pcvos replaces only its own results: move it away or choose another {self.what}"
            )
        if self.owned and not overwrite:
            raise InputError(
                f"{self.path}: already holds results; pass --overwrite to replace them "
                f"or choose another {self.what}"
            )

    def start(self) -> None:
        """Create the folder, record this run's files, then remove the earlier run's (summary first)."""
        self.path.mkdir(parents=True, exist_ok=True)
        write_manifest(self.path, self.owned | self.planned)  # recorded before anything is deleted or written
        for name in sorted(self.owned, key=lambda n: n != SUMMARY_NAME):
            (self.path / name).unlink(missing_ok=True)
        for folder in {(self.path / n).parent for n in self.owned if "/" in n}:
            if folder.is_dir() and not any(folder.iterdir()):
                folder.rmdir()
        write_manifest(self.path, self.planned)

    def claim(self, names: set[str]) -> None:
        """Record more names before writing them (a video longer than its estimate)."""
        if not names <= self.planned:
            self.planned |= names
            write_manifest(self.path, self.planned)


def _check_overlay(path: Path, overwrite: bool, inputs: list[Path]) -> None:
    if path.suffix.lower() not in VIDEO_EXTENSIONS:
        raise InputError(
            f"{path}: the overlay is a video; give it one of the extensions {', '.join(VIDEO_EXTENSIONS)}"
        )
    if path.is_dir():
        raise InputError(f"{path}: is a folder; --overlay takes a video file name")
    if any(path.resolve() == p.resolve() for p in inputs):
        raise InputError(f"{path}: is an input; choose another --overlay")
    if path.exists() and not overwrite:
        raise InputError(f"{path}: already exists; pass --overwrite to replace it")


def _writable(path: Path, what: str, folder: Path | None = None) -> None:
    """``path`` (written into ``folder``, default ``path`` itself) must be writable: checked up front."""
    try:
        check_writable(folder or path)
    except OSError as exc:
        raise InputError(f"{path}: cannot write {what} ({exc.strerror or exc})") from exc


def _frame_names(source: Any) -> list[str] | None:
    """Output names (stems) of a frame folder's frames; two frames of one stem are an error."""
    if not isinstance(source, FrameFolder):
        return None
    seen: dict[str, Path] = {}
    for path in source.frame_paths:
        other = seen.setdefault(path.stem, path)
        if other is not path:
            raise InputError(
                f"{other} and {path.name}: two frames with the same name {path.stem!r} would write the "
                f"same mask {path.stem}.png; rename or remove one"
            )
    return [p.stem for p in source.frame_paths]


def _with_backward_fill(
    seg: Segmenter,
    model: PCVOS,
    source: Any,
    input_path: Path,
    mask_maps: dict[int, np.ndarray],
    objects: list[dict[str, Any]],
    opt: SegmentOptions,
    size: int | None,
    device: torch.device,
    pending: dict[int, np.ndarray] | None,
) -> Iterator[tuple[int, np.ndarray]]:
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
        session = Session(
            model,
            input_path,
            clip_length=opt.clip_length,
            memory_every=opt.memory_every,
            pmm_segment=seg.config.pmm_segment,
            refine=seg.config.refine,
            top_k=opt.top_k,
            size=size,
            max_memory_frames=opt.max_memory_frames,
            device=device,
            precision=opt.precision,
        )
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
        if pending is not None and frames is not None:
            pending[index] = next(frames)
        yield index, results.pop(index)


def segment_video(
    model: PCVOS,
    input_path: str | Path,
    masks: list[MaskSpec],
    out_dir: str | Path,
    options: SegmentOptions | None = None,
    progress: Callable[[int, int | None], None] | None = None,
    prompts: list[PromptSpec] | None = None,
) -> dict[str, Any]:
    """Segment ``input_path`` (a video file or a folder of frames) and write the results.

    Writes one indexed PNG per frame into ``out_dir`` (each atomically, as soon as its clip is
    done), an overlay video and RGBA cut-outs when asked, and ``summary.json`` last. Bad input
    raises :class:`InputError` before anything is written or removed; a video that breaks part-way
    raises ``VideoDecodeError`` and a failed write :class:`OutputError` after the frames before it
    were written (no ``summary.json`` then). ``prompts`` are objects given by a box or as the most
    salient object (:class:`PromptSpec`); the masks made from them are written to
    ``out_dir/prompt_masks/<frame>.png`` before the segmentation starts. pcvos records the files it
    writes in each output folder (``.pcvos-files.json``); ``overwrite`` removes those, and only
    those, once the input and masks have been read and checked. Returns the summary.
    """
    opt = options or SegmentOptions()
    input_path, out_dir = Path(input_path), Path(out_dir)
    try:
        device = resolve_device(opt.device)
    except ValueError as exc:
        raise InputError(str(exc)) from None
    try:
        source = open_frames(input_path, strict=True)  # a truncated file ends in an error, not a short result
        h, w = source.size
    except (FileNotFoundError, IsADirectoryError, ValueError) as exc:
        raise InputError(str(exc)) from exc
    try:
        num_frames: int | None = len(source)
    except TypeError:
        num_frames = None
    if num_frames == 0:
        raise InputError(f"{input_path}: no frames")
    exact = (
        num_frames if getattr(source, "num_frames_exact", True) else None
    )  # estimates are only for progress
    names = _frame_names(source)
    size = opt.size if opt.size is not None and opt.size < min(h, w) else None
    try:
        processing = _processing_size(h, w, size)
    except ValueError as exc:
        raise InputError(f"--size {opt.size}: {exc}") from exc
    if not masks and not prompts:
        raise InputError("no mask or prompt given: give at least one --mask, --mask auto or --box")
    mask_maps, objects = load_masks(masks, (h, w), exact, processing)
    made = prompt_masks(prompts or [], source, mask_maps, objects, (h, w), exact, processing)
    ids = sorted(o["id"] for o in objects)

    # outputs: checked only now that the input and masks are known to be good; nothing written yet
    inputs = [input_path, *(m.path for m in masks)]
    for target, what in ((out_dir, "--out"), (opt.alpha, "--alpha")):
        if target is not None and input_path.is_dir() and _inside(target, input_path):
            raise InputError(
                f"{target}: {what} is inside the input folder {input_path}; choose a folder outside it"
            )
    if opt.alpha is not None and opt.alpha.resolve() == out_dir.resolve():
        raise InputError(f"{opt.alpha}: --alpha must be another folder than --out")
    known = names if names is not None else [f"{i:05d}" for i in range(exact)] if exact is not None else []
    coco, yolo = "coco" in opt.export, "yolo" in opt.export
    unknown = sorted(set(opt.export) - set(EXPORT_FORMATS))
    if unknown:
        raise InputError(f"--export {unknown[0]!r}: unknown format; choose from {', '.join(EXPORT_FORMATS)}")

    def out_names(stems: list[str]) -> set[str]:
        return {f"{n}.png" for n in stems} | ({f"{YOLO_FOLDER}/{n}.txt" for n in stems} if yolo else set())

    folders = [
        _OutputFolder(
            out_dir,
            "--out",
            out_names(known)
            | {SUMMARY_NAME}
            | ({COCO_NAME} if coco else set())
            | ({f"{YOLO_FOLDER}/{YOLO_NAMES}"} if yolo else set()),
            (_VIDEO_MASK_OR_YOLO_NAME if yolo else _VIDEO_MASK_NAME)
            if names is None and exact is None
            else None,
            nested=True,  # yolo/<frame>.txt: listed even when this run exports none, so it removes them
        )
    ]
    prompt_dir = out_dir / PROMPT_MASKS_DIR
    prompt_names = {f: names[f] if names is not None else f"{f:05d}" for f in made}
    for f in made:
        for o in objects:
            if o["mask"] is None and o["first_frame"] == f:
                o["mask"] = str(prompt_dir / f"{prompt_names[f]}.png")
    if opt.alpha is not None:
        folders.append(
            _OutputFolder(
                opt.alpha,
                "--alpha",
                {f"{o:03d}/{n}.png" for o in ids for n in known},
                _VIDEO_CUTOUT_NAME if names is None and exact is None else None,
                nested=True,
            )
        )
    if made or read_manifest(prompt_dir):  # after --alpha's (the frame loop finds it at folders[1]); an
        # earlier run's prompt masks go with --overwrite even when this run has no prompt
        folders.append(_OutputFolder(prompt_dir, "--out", {f"{n}.png" for n in prompt_names.values()}, None))
    for folder in folders:
        folder.inspect(opt.overwrite, inputs)
    if opt.overlay is not None:
        _check_overlay(opt.overlay, opt.overwrite, inputs)
    for folder in folders:
        _writable(folder.path, f"the {folder.what} files")
    if opt.overlay is not None:
        _writable(opt.overlay, "the --overlay video", opt.overlay.parent)
    if opt.adapt:
        # after every input and output check, so a bad run fails before the training; the
        # adapted copy serves the whole run (backward fill included)
        model = adapt_model(
            model.to(device),
            read_keyframes(source, mask_maps),
            mask_maps,
            opt.adapt,
            seed=opt.adapt_seed,
            size=size,
            progress=not opt.quiet,
        )

    seg = Segmenter(
        model,
        clip_length=opt.clip_length,
        memory_every=opt.memory_every,
        refine=model.has_refiner,
        pmm_segment=5 if model.has_refiner else None,
        top_k=opt.top_k,
        size=size,
        max_memory_frames=opt.max_memory_frames,
        device=device,
        precision=opt.precision,
    )
    for frame_index, m in mask_maps.items():
        seg.add_mask(frame_index, m)

    pending: dict[int, np.ndarray] = {}

    def frames() -> Iterator[np.ndarray]:
        for i, f in enumerate(source):
            if opt.overlay is not None or opt.alpha is not None:
                pending[i] = f
            yield f

    def write(path: Path, fn: Callable[[], object]) -> None:
        try:
            fn()
        except OSError as exc:  # full disk, folder removed or made read-only mid-run
            raise OutputError(
                f"{path}: cannot write ({exc.strerror or exc}); the results before it are "
                "complete, summary.json is not written"
            ) from exc

    for folder in folders:
        write(folder.path, folder.start)
    for f, labels in made.items():  # the prompts' masks first, so that the user can check them at once
        path = prompt_dir / f"{prompt_names[f]}.png"
        write(path, functools.partial(save_indexed_png, path, labels))
    writer = None
    if opt.overlay is not None:
        try:
            writer = VideoWriter(opt.overlay, fps=source.fps or 25.0)
        except OSError as exc:
            raise OutputError(f"{opt.overlay}: cannot write ({exc.strerror or exc})") from exc
    start = time.perf_counter()
    done = 0
    cocos = CocoBuilder()
    try:
        keep = pending if opt.overlay is not None or opt.alpha is not None else None
        results = (
            _with_backward_fill(
                seg, model, source, input_path, mask_maps, objects, opt, seg.size, device, keep
            )
            if opt.backward
            else seg.process(frames())
        )
        for index, labels in results:
            name = names[index] if names is not None else f"{index:05d}"
            if names is None and f"{name}.png" not in folders[0].planned:  # longer than its estimate
                block = [f"{i:05d}" for i in range(index, 2 * index + 1)]
                write(out_dir, functools.partial(folders[0].claim, out_names(block)))
                if opt.alpha is not None:
                    cutouts = {f"{o:03d}/{n}.png" for o in ids for n in block}
                    write(opt.alpha, functools.partial(folders[1].claim, cutouts))
            write(
                out_dir / f"{name}.png", functools.partial(save_indexed_png, out_dir / f"{name}.png", labels)
            )
            if yolo:
                path = out_dir / YOLO_FOLDER / f"{name}.txt"
                write(path, functools.partial(write_yolo_frame, path, labels, ids))
            if coco:
                # a frame folder's images keep their names; a video's frames are NNNNN.jpg, the names
                # `ffmpeg -i VIDEO -start_number 0 %05d.jpg` gives them
                file_name = (
                    source.frame_paths[index].name if isinstance(source, FrameFolder) else f"{name}.jpg"
                )
                cocos.add(index, file_name, labels, ids)
            if writer is not None or opt.alpha is not None:  # the frame was kept for them
                frame = pending.pop(index)
                if writer is not None:
                    write(writer.path, functools.partial(writer.write, draw_overlay(frame, labels)))
                if opt.alpha is not None:
                    for obj in ids:
                        path = opt.alpha / f"{obj:03d}" / f"{name}.png"
                        cut = Image.fromarray(rgba_cutout(frame, labels, obj), "RGBA")
                        write(
                            path,
                            functools.partial(atomic_write, path, functools.partial(cut.save, format="PNG")),
                        )
            done += 1
            if progress is not None:
                progress(done, num_frames)
        if writer is not None:
            write(writer.path, writer.close)
    except BaseException:
        if writer is not None:
            writer.abort()
        raise
    seconds = time.perf_counter() - start
    if yolo:
        path = out_dir / YOLO_FOLDER / YOLO_NAMES
        write(path, lambda: write_yolo_names(path, ids))
    if coco:
        document = cocos.document(ids)
        write(out_dir / COCO_NAME, lambda: write_coco_json(out_dir / COCO_NAME, document))
    summary = {
        "input": str(input_path),
        "frames": done,
        "size": [w, h],
        "objects": objects,
        "seconds": round(seconds, 3),
        "fps": round(done / seconds, 3) if seconds > 0 else None,
        "settings": {
            "clip_length": opt.clip_length,
            "memory_every": opt.memory_every or opt.clip_length,
            "processing_size": opt.size,
            "top_k": opt.top_k,
            "max_memory_frames": opt.max_memory_frames,
            "refine": model.has_refiner,
            "device": str(device),
            "precision": opt.precision,
            **opt.extra,
        },
        "outputs": {
            "masks": str(out_dir),
            "overlay": str(opt.overlay) if opt.overlay else None,
            "alpha": str(opt.alpha) if opt.alpha else None,
            "coco": str(out_dir / COCO_NAME) if coco else None,
            "yolo": str(out_dir / YOLO_FOLDER) if yolo else None,
            "prompt_masks": str(prompt_dir) if made else None,
        },
    }
    write(
        out_dir / SUMMARY_NAME,
        lambda: atomic_write_text(out_dir / SUMMARY_NAME, json.dumps(summary, indent=2)),
    )
    return summary
