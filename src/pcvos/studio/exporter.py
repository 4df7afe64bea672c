"""Export a workspace's masks at the original resolution, into the workspace and as one zip.

``export/`` holds ``masks/NNNNN.png`` (indexed, DAVIS palette), ``objects/<id>/NNNNN.png`` (0/255
per object), ``cutouts/<id>/NNNNN.png`` (RGBA), ``overlay.mp4`` (H.264 at the source frame rate),
on request ``coco.json`` (COCO instances, RLE masks) and ``yolo/NNNNN.txt`` + ``yolo/classes.txt``
(YOLO-seg polygons), both from :mod:`pcvos.data.export_formats` with the objects' names as the
categories / classes, and ``pcvos_export.zip`` with all of them. An export is built in a hidden sibling folder
(``.export-<pid>-<random>``, holding the marker file ``.pcvos-export`` from its start) and swapped in
when complete, so a cancelled or failed export leaves the previous one as it was; what a killed
export leaves is removed by :meth:`~pcvos.studio.workspace.Workspace.remove_leftovers`.
"""

from __future__ import annotations

import os
import shutil
import threading
import uuid
import zipfile
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from PIL import Image

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
from pcvos.data.frames import VideoWriter
from pcvos.data.io_utils import atomic_write, save_indexed_png
from pcvos.data.overlay import overlay, rgba_cutout

__all__ = [
    "export_workspace",
    "ExportCancelled",
    "ZIP_NAME",
    "DEFAULT_FPS",
    "EXPORT_MARKER",
    "EXPORT_ENTRIES",
]

ZIP_NAME = "pcvos_export.zip"
#: Written first into every folder an export builds: tells the studio's clean-up the folder is its own.
EXPORT_MARKER = ".pcvos-export"
#: Everything an export folder holds (besides the marker and atomic temporary files).
EXPORT_ENTRIES = frozenset({"masks", "objects", "cutouts", "overlay.mp4", COCO_NAME, YOLO_FOLDER, ZIP_NAME})
#: Frame rate of the overlay video when the source (a frame folder) has none.
DEFAULT_FPS = 24.0


class ExportCancelled(Exception):
    """The export was cancelled; the previous export is untouched."""


def _save_png(path: Path, array: np.ndarray, mode: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda tmp: Image.fromarray(array, mode).save(tmp, format="PNG"))


def _one_line(name: str) -> str:
    """An object's name as one line of a names file (the page lets names hold any text)."""
    return " ".join(name.split()) or "object"


def export_workspace(
    ws,
    progress: Callable[[int, int], None] | None = None,
    cancel: threading.Event | None = None,
    formats: Sequence[str] = (),
) -> Path:
    """Write the export of workspace ``ws`` (a :class:`~pcvos.studio.workspace.Workspace`); returns the zip.

    Frames that were never segmented export as background. ``formats`` (from ``EXPORT_FORMATS``:
    ``"coco"``, ``"yolo"``) are written too; COCO images are named as the workspace's cached
    frames (``NNNNN.jpg``). ``progress(done, total)`` is called per frame; setting ``cancel``
    stops before the next frame.
    """
    unknown = sorted(set(formats) - set(EXPORT_FORMATS))
    if unknown:
        raise ValueError(f"unknown export format {unknown[0]!r}; choose from {', '.join(EXPORT_FORMATS)}")
    coco, yolo = "coco" in formats, "yolo" in formats
    cocos = CocoBuilder()
    final = ws.export_dir
    build = ws.root / f".export-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    ids = ws.object_ids()
    names = {o["id"]: _one_line(str(o["name"])) for o in ws.state()["objects"]}
    total = ws.num_frames
    build.mkdir()
    try:
        (build / EXPORT_MARKER).write_text(f"pcvos studio export of process {os.getpid()}\n")
        if yolo:
            (build / YOLO_FOLDER).mkdir()
        with VideoWriter(build / "overlay.mp4", fps=ws.fps or DEFAULT_FPS) as writer:
            for t in range(total):
                if cancel is not None and cancel.is_set():
                    raise ExportCancelled
                frame = ws.read_frame(t)
                labels = ws.read_labels(t)
                if labels is None:
                    labels = np.zeros((ws.height, ws.width), np.uint8)
                name = f"{t:05d}.png"
                save_indexed_png(build / "masks" / name, labels)
                for obj in ids:
                    _save_png(
                        build / "objects" / f"{obj:03d}" / name,
                        np.where(labels == obj, 255, 0).astype(np.uint8),
                        "L",
                    )
                    _save_png(
                        build / "cutouts" / f"{obj:03d}" / name, rgba_cutout(frame, labels, obj), "RGBA"
                    )
                writer.write(overlay(frame, labels))
                if yolo:
                    write_yolo_frame(build / YOLO_FOLDER / f"{t:05d}.txt", labels, ids)
                if coco:
                    cocos.add(t, ws.frame_path(t).name, labels, ids)
                if progress is not None:
                    progress(t + 1, total)
        if yolo:  # class i is the i-th object id, as write_yolo_frame numbers them
            write_yolo_names(build / YOLO_FOLDER / YOLO_NAMES, ids, names)
        if coco:
            write_coco_json(build / COCO_NAME, cocos.document(ids, names))
        _write_zip(build, build / ZIP_NAME)
        old = ws.root / f".export-old-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        if final.exists():
            os.replace(final, old)
        os.replace(build, final)
        shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(build, ignore_errors=True)  # only the folder this export made
        raise
    return final / ZIP_NAME


def _write_zip(folder: Path, zip_path: Path) -> None:
    files = sorted(
        p for p in folder.rglob("*") if p.is_file() and p != zip_path and not p.name.startswith(".")
    )

    def write(tmp: Path) -> None:
        # PNG and H.264 are compressed already: storing them is as small and much faster
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_STORED) as zf:
            for p in files:
                zf.write(p, p.relative_to(folder).as_posix())

    atomic_write(zip_path, write)
