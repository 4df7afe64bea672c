"""Crash-safe file writing and indexed-PNG saving.

Every writer in :mod:`pcvos.data` writes into a hidden temporary file in the destination folder and
``os.replace()``-s it onto the final name only once the write has succeeded, so an exception or a
killed process never leaves a half-written file under the final name (at worst a stray
``.<name>.*.tmp<ext>`` file is left behind by a hard kill).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import tempfile
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeAlias

import numpy as np
from PIL import Image

from pcvos.data.palette import DAVIS_PALETTE

__all__ = [
    "PathLike",
    "temp_path_for",
    "atomic_path",
    "atomic_write",
    "atomic_write_text",
    "save_indexed_png",
    "encode_indexed_png",
    "MANIFEST_NAME",
    "read_manifest",
    "write_manifest",
    "check_writable",
]

PathLike: TypeAlias = str | os.PathLike


def temp_path_for(path: PathLike) -> Path:
    """Return an unused hidden temporary name beside ``path`` that keeps its extension.

    Keeping the extension lets libraries that pick the format from the name (Pillow, FFmpeg) work
    on the temporary file. The file itself is not created.
    """
    path = Path(path)
    return path.with_name(f".{path.name}.{os.getpid()}-{uuid.uuid4().hex[:8]}.tmp{path.suffix}")


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_path(path: PathLike, *, fsync: bool = False) -> Iterator[Path]:
    """Context manager yielding a temporary path to write; on success it replaces ``path``.

    Parent folders are created. If the block raises, the temporary file is removed and ``path`` is
    left untouched. ``fsync=True`` also flushes the data to disk before the rename (durability
    against power loss, at a cost of a few milliseconds per file).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path_for(path)
    try:
        yield tmp
        if not tmp.exists():
            raise FileNotFoundError(f"{path}: the writer did not create the temporary file {tmp.name}")
        if fsync:
            _fsync_file(tmp)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


def atomic_write(path: PathLike, write_fn: Callable[[Path], object], *, fsync: bool = False) -> Path:
    """Call ``write_fn(tmp_path)`` to write a temporary file, then atomically rename it to ``path``.

    ``write_fn`` receives a path in the same folder with the same extension and must create the
    file there. Returns the final ``Path``. On any exception nothing is left at ``path`` (an
    existing file there is kept as it was) and the exception propagates.
    """
    with atomic_path(path, fsync=fsync) as tmp:
        write_fn(tmp)
    return Path(path)


def atomic_write_text(path: PathLike, text: str, *, fsync: bool = False) -> Path:
    """Write ``text`` (UTF-8, newlines as given) to ``path`` atomically, as :func:`atomic_write` does."""
    return atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8", newline=""), fsync=fsync)


def _as_label_image(labels: np.ndarray, palette: np.ndarray, what: str) -> Image.Image:
    labels = np.asarray(labels)
    if labels.ndim != 2:
        raise ValueError(f"{what}: labels must be a 2-D (H, W) array, got shape {labels.shape}")
    if labels.dtype == np.bool_:
        labels = labels.astype(np.uint8)
    elif labels.dtype != np.uint8:
        if not np.issubdtype(labels.dtype, np.integer):
            raise ValueError(f"{what}: labels must be an integer array, got dtype {labels.dtype}")
        if labels.size and (labels.min() < 0 or labels.max() > 255):
            raise ValueError(
                f"{what}: labels must be in 0..255 for an indexed PNG, got {labels.min()}..{labels.max()}"
            )
        labels = labels.astype(np.uint8)
    palette = np.asarray(palette)
    if palette.ndim != 2 or palette.shape[1] != 3 or not 1 <= palette.shape[0] <= 256:
        raise ValueError(f"{what}: palette must have shape (N, 3) with N <= 256, got {palette.shape}")
    image = Image.fromarray(np.ascontiguousarray(labels))  # mode "L"
    image.putpalette(palette.astype(np.uint8).tobytes())  # turns it into mode "P", indices unchanged
    return image


def encode_indexed_png(
    labels: np.ndarray, palette: np.ndarray = DAVIS_PALETTE, *, name: str = "labels"
) -> bytes:
    """Encode a (H, W) label map as indexed-PNG bytes (e.g. for zip archives); ``name`` is for errors."""
    buffer = io.BytesIO()
    _as_label_image(labels, palette, name).save(buffer, format="PNG")
    return buffer.getvalue()


def save_indexed_png(path: PathLike, labels: np.ndarray, palette: np.ndarray = DAVIS_PALETTE) -> Path:
    """Save a (H, W) uint8 label map as an indexed ("P" mode) PNG with ``palette``, atomically.

    Pixel values are stored unchanged as palette indices (255 stays 255 = void). Integer arrays
    with values in 0..255 and boolean arrays are accepted too. Returns the final ``Path``.
    """
    image = _as_label_image(labels, palette, str(path))
    return atomic_write(path, lambda tmp: image.save(tmp, format="PNG"))


#: Hidden file in which pcvos records the files it wrote into an output folder (relative paths),
#: so that ``--overwrite`` can remove its own results and nothing else.
MANIFEST_NAME = ".pcvos-files.json"
_MANIFEST_FORMAT = "pcvos-files"


def read_manifest(folder: PathLike) -> set[str]:
    """Relative paths of the files pcvos recorded writing into ``folder`` (empty if none or unreadable)."""
    path = Path(folder) / MANIFEST_NAME
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return set()
    if (
        not isinstance(data, dict)
        or data.get("format") != _MANIFEST_FORMAT
        or not isinstance(data.get("files"), list)
    ):
        return set()
    # only plain relative names inside the folder: a tampered record cannot point anywhere else
    return {
        f
        for f in data["files"]
        if isinstance(f, str) and f and not Path(f).is_absolute() and ".." not in Path(f).parts
    }


def write_manifest(folder: PathLike, names: set[str] | list[str]) -> Path:
    """Record (atomically) that pcvos writes the files ``names`` (relative paths) into ``folder``."""
    payload = {"format": _MANIFEST_FORMAT, "version": 1, "files": sorted(set(names))}
    return atomic_write_text(Path(folder) / MANIFEST_NAME, json.dumps(payload))


def check_writable(folder: PathLike) -> None:
    """Raise ``OSError`` unless a file can be created in ``folder`` (or, if it does not exist yet, in
    its nearest existing parent). A real write, because permission bits do not tell on read-only
    mounts or for root."""
    folder = Path(folder).absolute()
    probe_dir = folder
    while not probe_dir.exists():
        probe_dir = probe_dir.parent
    if not probe_dir.is_dir():
        raise NotADirectoryError(f"{probe_dir} is not a folder")
    fd, name = tempfile.mkstemp(prefix=".pcvos-probe-", dir=probe_dir)
    os.close(fd)
    os.unlink(name)
