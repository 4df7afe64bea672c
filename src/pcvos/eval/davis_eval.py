"""DAVIS 2016 / 2017 semi-supervised evaluation, numerically identical to the official toolkit.

Reproduces ``davis2017-evaluation`` (``evaluation_method.py --task semi-supervised``):

* sequences come from ``ROOT/ImageSets/<year>/<subset>.txt`` (or the DAVIS 2016 release form
  ``ROOT/ImageSets/480p/<subset>.txt``); the frames of a sequence are the sorted PNGs of
  ``ROOT/Annotations/480p/<sequence>/``; the first and the last frame are not evaluated;
* DAVIS 2017: the objects are ``1 .. max id`` of the first-frame annotation (void = 255 removed
  first); each object is scored against ``result == id``. A result index above that count is
  an error, an object absent from the results scores as an empty mask. Void pixels of the
  annotation count as background (the toolkit's semi-supervised path passes no void mask);
  pass ``exclude_void=True`` to ignore them instead.
* DAVIS 2016 (``year="2016"``): every non-void annotated pixel is the single object (as in the
  2016 variant of the toolkit, ``hkchengrex/davis2016-evaluation``); results must hold one
  object (index 1, or 255 in a 0/255 mask).
* per object: J and F per frame, then mean / recall / decay (:func:`~pcvos.eval.metrics.db_statistics`);
  global numbers are plain means over all objects of all sequences, ``J&F = (J + F) / 2``.

Mask PNGs: indexed ("P") PNGs carry object ids with 255 = void (annotations); 8-bit grayscale
0/255 masks (the original DAVIS 2016 release) are one object. A result mask whose values are
only 0 and 255 is read as one object whatever its mode. Colour images are rejected.

Outputs in the results folder (written atomically): ``global_results-<subset>.csv`` and
``per-sequence_results-<subset>.csv`` in the toolkit's exact format (``%.3f``), and
``metrics.json`` at full precision.
"""

from __future__ import annotations

import csv
import io
import json
import math
import multiprocessing as mp
import os
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeAlias

import numpy as np
from PIL import Image, UnidentifiedImageError

from pcvos.data.io_utils import atomic_write_text
from pcvos.eval.metrics import (
    BOUND_TH,
    _f_from_boundaries,  # noqa: PLC2701 (shared fast path)
    bound_pixels,
    crop_box,
    db_statistics,
    seg2bmap,
)

__all__ = [
    "GLOBAL_COLUMNS",
    "SEQUENCE_COLUMNS",
    "VOID_LABEL",
    "read_annotation",
    "read_result",
    "read_sequence_list",
    "resolve_year",
    "evaluate_sequence",
    "evaluate_davis",
    "format_tables",
]

VOID_LABEL = 255
GLOBAL_COLUMNS: tuple[str, ...] = (
    "J&F-Mean",
    "J-Mean",
    "J-Recall",
    "J-Decay",
    "F-Mean",
    "F-Recall",
    "F-Decay",
)
SEQUENCE_COLUMNS: tuple[str, ...] = ("Sequence", "J-Mean", "F-Mean")
_TASKS = ("semi-supervised",)
_YEARS = ("2016", "2017")

PathLike: TypeAlias = str | os.PathLike


# --------------------------------------------------------------------------------------------
# mask reading
# --------------------------------------------------------------------------------------------
def _open_png(path: Path) -> tuple[np.ndarray, str]:
    if not path.is_file():
        raise FileNotFoundError(f"mask not found: {path}")
    try:
        with Image.open(path) as im:
            mode = im.mode
            arr = np.array(im)
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        raise ValueError(f"cannot read mask PNG {path}: {exc}") from exc
    if mode not in ("P", "L", "1", "I", "I;16", "I;16B", "I;16L"):
        raise ValueError(f"{path}: mask must be an indexed (P) or 8-bit grayscale PNG, got mode {mode!r}")
    if arr.ndim != 2:
        raise ValueError(f"{path}: mask must be single-channel, got shape {arr.shape}")
    if arr.dtype == bool:
        arr = arr.astype(np.uint8)
    if arr.size and (arr.min() < 0):
        raise ValueError(f"{path}: negative values in mask")
    return arr, mode


def _is_binary_255(arr: np.ndarray) -> bool:
    """True for a mask whose values are a subset of {0, 255} that contains 255."""
    return bool(np.any(arr == 255)) and not bool(np.any((arr != 0) & (arr != 255)))


def read_annotation(path: PathLike) -> tuple[np.ndarray, np.ndarray]:
    """Read a ground-truth mask. Returns ``(ids, void)``.

    ``ids`` is an integer array of object ids (0 background, void set to 0, as the toolkit
    does) and ``void`` a boolean array of void pixels. A grayscale mask holding only 0/255 is
    a single object (255 -> id 1, no void); in indexed / other masks 255 is void.
    """
    path = Path(path)
    arr, mode = _open_png(path)
    if mode != "P" and _is_binary_255(arr):
        return (arr == 255).astype(np.uint8), np.zeros(arr.shape, dtype=bool)
    void = arr == VOID_LABEL
    ids = np.where(void, 0, arr)
    if ids.dtype != np.uint8 and ids.size and ids.max() <= 255:
        ids = ids.astype(np.uint8)
    return ids, void


def read_result(path: PathLike) -> np.ndarray:
    """Read a result mask and return its object ids (0 = background).

    Indexed PNGs give their indices; a mask whose values are only 0 and 255 (e.g. a
    grayscale DAVIS 2016 style mask) is one object (255 -> 1).
    """
    path = Path(path)
    arr, _ = _open_png(path)
    if _is_binary_255(arr):
        return (arr == 255).astype(np.uint8)
    return arr


# --------------------------------------------------------------------------------------------
# dataset layout
# --------------------------------------------------------------------------------------------
def _imagesets_candidates(root: Path, subset: str, year: str | None) -> list[tuple[str, Path]]:
    c2017 = ("2017", root / "ImageSets" / "2017" / f"{subset}.txt")
    c2016 = ("2016", root / "ImageSets" / "2016" / f"{subset}.txt")
    c2016_480 = ("2016", root / "ImageSets" / "480p" / f"{subset}.txt")
    if year is None:
        return [c2017, c2016, c2016_480]
    if year == "2017":
        return [c2017]
    return [c2016, c2016_480]


def resolve_year(davis_root: PathLike, subset: str = "val", year: str | None = None) -> tuple[str, Path]:
    """Find the sequence list. Returns ``(year, path_of_list)``.

    ``year=None`` (or ``"auto"``) picks ``ImageSets/2017``, then ``ImageSets/2016``, then the
    DAVIS 2016 release form ``ImageSets/480p``.
    """
    root = Path(davis_root)
    if year is not None:
        year = str(year)
        if year == "auto":
            year = None
        elif year not in _YEARS:
            raise ValueError(f"year must be one of {_YEARS} or 'auto', got {year!r}")
    if not root.is_dir():
        raise FileNotFoundError(f"DAVIS root not found: {root}")
    cands = _imagesets_candidates(root, subset, year)
    for y, p in cands:
        if p.is_file():
            return y, p
    tried = ", ".join(str(p) for _, p in cands)
    raise FileNotFoundError(f"sequence list for subset {subset!r} not found (tried {tried})")


def read_sequence_list(path: PathLike) -> list[str]:
    """Sequence names of an ImageSets file.

    Accepts the DAVIS 2017 form (one name a line) and the DAVIS 2016 release form
    (``/JPEGImages/480p/bear/00000.jpg /Annotations/480p/bear/00000.png`` lines), keeping the
    order of first appearance.
    """
    path = Path(path)
    names: list[str] = []
    seen = set()
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            line = line.strip()
            if not line:
                continue
            token = line.split()[0]
            if "/" in token:
                parts = [p for p in token.split("/") if p]
                if len(parts) < 2:
                    raise ValueError(f"{path}:{lineno}: cannot parse a sequence name from {line!r}")
                name = parts[-2]
            else:
                name = token
            if name not in seen:
                seen.add(name)
                names.append(name)
    if not names:
        raise ValueError(f"sequence list {path} is empty")
    return names


def _frame_id(p: Path) -> str:
    # the toolkit takes the file name without its last extension
    return p.name[: -len(p.suffix)] if p.suffix else p.name


# --------------------------------------------------------------------------------------------
# per-sequence evaluation
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _SeqJob:
    name: str
    gt_frames: tuple[str, ...]
    results_dir: str
    single_object: bool
    exclude_void: bool
    bound_th: float


@dataclass
class SequenceResult:
    """Per-frame values of one sequence: ``j`` and ``f`` are ``(n_objects, n_frames)``."""

    name: str
    frame_ids: list[str]
    j: np.ndarray
    f: np.ndarray


def _gt_frames(davis_root: Path, seq: str) -> list[Path]:
    seq_dir = davis_root / "Annotations" / "480p" / seq
    if not seq_dir.is_dir():
        raise FileNotFoundError(f"annotations for sequence {seq!r} not found: {seq_dir}")
    frames = sorted(
        p for p in seq_dir.iterdir() if p.suffix == ".png" and not p.name.startswith(".") and p.is_file()
    )
    if not frames:
        raise FileNotFoundError(f"no annotation PNGs in {seq_dir}")
    return frames


def evaluate_sequence(job: _SeqJob) -> SequenceResult:
    """Evaluate one sequence (semi-supervised): per-object, per-frame J and F."""
    gt_paths = [Path(p) for p in job.gt_frames]
    if len(gt_paths) < 3:
        raise ValueError(
            f"sequence {job.name!r} has {len(gt_paths)} annotated frames; the semi-supervised "
            "evaluation skips the first and the last frame and needs at least 3"
        )
    res_dir = Path(job.results_dir) / job.name
    if not res_dir.is_dir():
        raise FileNotFoundError(f"results for sequence {job.name!r} not found: {res_dir}")

    first_ids, _ = read_annotation(gt_paths[0])
    n_obj = 1 if job.single_object else int(first_ids.max()) if first_ids.size else 0
    shape = first_ids.shape

    eval_paths = gt_paths[1:-1]
    frame_ids = [_frame_id(p) for p in eval_paths]
    t = len(eval_paths)
    radius = bound_pixels(shape, job.bound_th)
    j = np.zeros((n_obj, t), dtype=np.float64)
    f = np.zeros((n_obj, t), dtype=np.float64)

    for i, (gp, fid) in enumerate(zip(eval_paths, frame_ids, strict=True)):
        ids, void = read_annotation(gp)
        if ids.shape != shape:
            raise ValueError(f"{gp}: annotation shape {ids.shape} differs from the first frame's {shape}")
        rp = res_dir / f"{fid}.png"
        if not rp.is_file():
            raise FileNotFoundError(f"result frame missing for sequence {job.name!r}, frame {fid}: {rp}")
        res = read_result(rp)
        if res.shape != shape:
            raise ValueError(
                f"{rp}: result shape {res.shape} differs from the annotation shape {shape} "
                f"(sequence {job.name!r}, frame {fid})"
            )
        rmax = int(res.max()) if res.size else 0
        if rmax > n_obj:
            raise ValueError(
                f"sequence {job.name!r}, frame {fid}: result {rp} contains object index {rmax} "
                f"but the first-frame annotation has only {n_obj} object(s)"
            )
        if n_obj == 0:
            continue
        if job.single_object:
            gt = (ids > 0).view(np.uint8)
        else:
            # ids above n_obj (objects that appear later) belong to no evaluated object
            gt = ids if int(ids.max()) <= n_obj else np.where(ids > n_obj, 0, ids)
        # Every evaluated pixel of every object lies in this window (see metrics.crop_box);
        # J and F computed on it equal the full-frame values.
        box = crop_box((gt != 0) | (res != 0))
        if box is None:
            j[:, i] = 1.0  # empty union for every object
            f[:, i] = 1.0  # no boundary in either mask
            continue
        gt_c, res_c = gt[box], res[box]
        keep = ~void[box] if job.exclude_void else None
        for k in range(1, n_obj + 1):
            g = gt_c == k
            r = res_c == k
            if keep is not None:
                g &= keep
                r &= keep
            n_union = int(np.count_nonzero(g | r))
            j[k - 1, i] = 1.0 if n_union == 0 else np.count_nonzero(g & r) / n_union
            f[k - 1, i] = _f_from_boundaries(seg2bmap(r), seg2bmap(g), radius)
    return SequenceResult(job.name, frame_ids, j, f)


def _worker_init() -> None:
    try:
        import cv2

        cv2.setNumThreads(1)
    except Exception:  # pragma: no cover - cv2 is a hard dependency of metrics anyway
        pass


def _default_workers() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - non-Linux
        return max(1, os.cpu_count() or 1)


def _mp_context() -> Any:
    # Not fork: the workers run only numpy / Pillow / OpenCV code, but a caller that has used
    # OpenCV's (or torch's) thread pool leaves its locks in whatever state its threads had, and
    # a forked worker hung in cv2.setNumThreads that way (in the test suite). A fork server forks
    # workers from a clean single-threaded process that imported this module once.
    if "forkserver" in mp.get_all_start_methods():
        ctx = mp.get_context("forkserver")
        ctx.set_forkserver_preload([__name__])
        return ctx
    return mp.get_context()


# --------------------------------------------------------------------------------------------
# output files
# --------------------------------------------------------------------------------------------
def _write_text(path: Path, text: str) -> None:
    # fsync: result tables are small and worth keeping across a power loss
    atomic_write_text(path, text, fsync=True)


def _fmt3(x: float) -> str:
    # pandas.DataFrame.to_csv(float_format="%.3f") writes NaN as an empty field
    return "" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.3f}"


def _csv_text(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n", quoting=csv.QUOTE_MINIMAL)
    w.writerow(header)
    w.writerows(rows)
    return buf.getvalue()


def _global_csv(g: dict[str, Any]) -> str:
    return _csv_text(GLOBAL_COLUMNS, [[_fmt3(g[c]) for c in GLOBAL_COLUMNS]])


def _sequence_csv(per_object: dict[str, list[float]]) -> str:
    rows = [[name, _fmt3(v[0]), _fmt3(v[1])] for name, v in per_object.items()]
    return _csv_text(SEQUENCE_COLUMNS, rows)


def _json_safe(x: Any) -> Any:
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {k: _json_safe(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_json_safe(v) for v in x]
    return x


def format_tables(metrics: dict[str, Any], subset: str = "val") -> str:
    """Human-readable global and per-sequence tables (3 decimals), like the toolkit prints."""
    lines = [f"--------------------------- Global results for {subset} ---------------------------"]
    widths = [max(len(c), 8) for c in GLOBAL_COLUMNS]
    lines.append(" ".join(c.rjust(w) for c, w in zip(GLOBAL_COLUMNS, widths, strict=True)))
    lines.append(" ".join(_fmt3(metrics[c]).rjust(w) for c, w in zip(GLOBAL_COLUMNS, widths, strict=True)))
    lines.append("")
    lines.append(f"---------- Per sequence results for {subset} ----------")
    per = metrics["per_object"]
    nw = max([len("Sequence")] + [len(n) for n in per])
    lines.append("Sequence".rjust(nw) + "  J-Mean  F-Mean")
    for name, (jm, fm) in per.items():
        lines.append(name.rjust(nw) + " " + _fmt3(jm).rjust(7) + " " + _fmt3(fm).rjust(7))
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# public entry point
# --------------------------------------------------------------------------------------------
def evaluate_davis(
    davis_root: PathLike,
    results_dir: PathLike,
    subset: str = "val",
    task: str = "semi-supervised",
    year: str | None = None,
    workers: int | None = None,
    *,
    sequences: Sequence[str] | None = None,
    exclude_void: bool = False,
    bound_th: float = BOUND_TH,
    write_files: bool = True,
) -> dict[str, Any]:
    """Evaluate DAVIS results the way the official toolkit does (semi-supervised task).

    Args:
        davis_root: folder with ``Annotations/480p/<seq>/*.png`` and ``ImageSets/...``.
        results_dir: folder with ``<sequence>/<frame>.png`` result masks; the CSV / JSON
            outputs are written here.
        subset: name of the sequence list (``val``, ``train``, ...).
        task: only ``"semi-supervised"`` is supported.
        year: ``"2017"``, ``"2016"`` or ``None`` / ``"auto"`` (see :func:`resolve_year`).
        workers: processes to use (default: all available cores; ``1`` runs in-process).
        sequences: evaluate only these sequences (default: all of the subset).
        exclude_void: ignore annotation void pixels (255) instead of treating them as
            background like the toolkit's semi-supervised evaluation.
        bound_th: boundary tolerance of F.
        write_files: write ``global_results-<subset>.csv``, ``per-sequence_results-<subset>.csv``
            and ``metrics.json`` into ``results_dir``.

    Returns:
        ``{"J&F-Mean", "J-Mean", "J-Recall", "J-Decay", "F-Mean", "F-Recall", "F-Decay": float,
        "per_object": {"<sequence>_<i>": [J-Mean, F-Mean]}}`` (the content of ``metrics.json``,
        which stores non-finite values as ``null``).

    Raises:
        FileNotFoundError: missing root, sequence list, annotations, result folder or frame.
        ValueError: unreadable / invalid PNG, object index above the first-frame object count,
            shape mismatch, bad arguments.
    """
    if task not in _TASKS:
        raise ValueError(f"task must be one of {_TASKS}, got {task!r}")
    root = Path(davis_root)
    res_root = Path(results_dir)
    year_used, list_path = resolve_year(root, subset, year)
    names = read_sequence_list(list_path)
    if sequences is not None:
        wanted = list(sequences)
        missing = [s for s in wanted if s not in names]
        if missing:
            raise ValueError(f"sequences not in {list_path}: {', '.join(missing)}")
        names = wanted
    if not res_root.is_dir():
        raise FileNotFoundError(f"results folder not found: {res_root}")

    jobs = []
    for seq in names:
        frames = _gt_frames(root, seq)
        if not (res_root / seq).is_dir():
            raise FileNotFoundError(f"results for sequence {seq!r} not found: {res_root / seq}")
        jobs.append(
            _SeqJob(
                name=seq,
                gt_frames=tuple(str(p) for p in frames),
                results_dir=str(res_root),
                single_object=(year_used == "2016"),
                exclude_void=exclude_void,
                bound_th=bound_th,
            )
        )

    n_workers = _default_workers() if workers is None else int(workers)
    if n_workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    n_workers = min(n_workers, len(jobs))

    results: dict[str, SequenceResult] = {}
    if n_workers <= 1:
        for job in jobs:
            results[job.name] = evaluate_sequence(job)
    else:
        # longest sequences first for a better balance
        order = sorted(jobs, key=lambda jb: -len(jb.gt_frames))
        with ProcessPoolExecutor(
            max_workers=n_workers, mp_context=_mp_context(), initializer=_worker_init
        ) as ex:
            futs = {ex.submit(evaluate_sequence, jb): jb.name for jb in order}
            try:
                for fut, name in futs.items():
                    results[name] = fut.result()
            except BaseException:
                for fut in futs:
                    fut.cancel()
                raise

    j_m: list[float] = []
    j_r: list[float] = []
    j_d: list[float] = []
    f_m: list[float] = []
    f_r: list[float] = []
    f_d: list[float] = []
    per_object: dict[str, list[float]] = {}
    for seq in names:
        r = results[seq]
        for ii in range(r.j.shape[0]):
            jm, jr, jd = db_statistics(r.j[ii])
            fm, fr, fd = db_statistics(r.f[ii])
            j_m.append(jm)
            j_r.append(jr)
            j_d.append(jd)
            f_m.append(fm)
            f_r.append(fr)
            f_d.append(fd)
            per_object[f"{seq}_{ii + 1}"] = [jm, fm]

    def _mean(xs: list[float]) -> float:
        return float(np.mean(xs)) if xs else math.nan

    jm_all, fm_all = _mean(j_m), _mean(f_m)
    metrics: dict[str, Any] = {
        "J&F-Mean": float((jm_all + fm_all) / 2.0),
        "J-Mean": jm_all,
        "J-Recall": _mean(j_r),
        "J-Decay": _mean(j_d),
        "F-Mean": fm_all,
        "F-Recall": _mean(f_r),
        "F-Decay": _mean(f_d),
        "per_object": per_object,
    }

    if write_files:
        _write_text(res_root / f"global_results-{subset}.csv", _global_csv(metrics))
        _write_text(res_root / f"per-sequence_results-{subset}.csv", _sequence_csv(per_object))
        _write_text(
            res_root / "metrics.json", json.dumps(_json_safe(metrics), indent=2, allow_nan=False) + "\n"
        )
    return metrics
