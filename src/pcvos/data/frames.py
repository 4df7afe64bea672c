"""Reading frames from folders of images and from video files, and writing videos.

Sizes are ``(height, width)`` everywhere in :mod:`pcvos.data`; frames are ``(H, W, 3)`` uint8 RGB.
Video decoding and encoding use PyAV (FFmpeg).
"""

from __future__ import annotations

import contextlib
import os
import re
import warnings
from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path
from typing import Protocol, runtime_checkable

import av
import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from pcvos.data.io_utils import PathLike, temp_path_for

__all__ = [
    "IMAGE_EXTENSIONS",
    "VIDEO_EXTENSIONS",
    "natural_key",
    "list_frames",
    "read_frame",
    "exif_orientation",
    "displayed_size",
    "VideoDecodeError",
    "container_truncated",
    "VideoReader",
    "FrameFolder",
    "FrameSource",
    "open_frames",
    "VideoWriter",
]

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
VIDEO_EXTENSIONS = (".mp4", ".mov", ".avi", ".webm", ".mkv")

_DIGITS = re.compile(r"(\d+)")


def natural_key(name: PathLike) -> tuple[tuple[str | int, ...], str]:
    """Sort key that orders embedded numbers numerically: ``"2.jpg"`` before ``"10.jpg"``.

    Text parts compare case-insensitively; ties (e.g. ``"01"`` vs ``"1"``) fall back to the
    plain string, so the order is total and deterministic.
    """
    text = os.fspath(name)
    parts = _DIGITS.split(text.lower())
    return tuple(int(p) if i % 2 else p for i, p in enumerate(parts)), text


def list_frames(folder: PathLike) -> list[Path]:
    """Image files (jpg, jpeg, png, bmp, webp; any case) of a folder in natural order.

    Hidden files (``.name``) are skipped. Raises ``FileNotFoundError`` for a missing folder,
    ``NotADirectoryError`` for a file and ``ValueError`` when the folder holds no frames.
    """
    folder = Path(folder)
    if not folder.exists():
        raise FileNotFoundError(f"{folder}: frame folder not found")
    if not folder.is_dir():
        raise NotADirectoryError(f"{folder}: expected a folder of frames, got a file")
    frames = [
        p
        for p in folder.iterdir()
        if p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith(".") and p.is_file()
    ]
    if not frames:
        raise ValueError(f"{folder}: no frames found (looked for {', '.join(IMAGE_EXTENSIONS)})")
    return sorted(frames, key=lambda p: natural_key(p.name))


# EXIF orientations 5-8 turn the stored image by 90 degrees: the displayed width is the stored height
_TRANSPOSING_ORIENTATIONS = (5, 6, 7, 8)
_EXIF_ORIENTATION_TAG = 0x0112
# Largest value of each integer image mode that Pillow's convert("RGB") would otherwise clip at 255
_HIGH_DEPTH_MAX = {"I;16": 65535, "I;16L": 65535, "I;16B": 65535, "I;16N": 65535}


def _image_error(path: Path, err: BaseException) -> ValueError:
    """A one-line ``ValueError`` naming ``path`` for any way Pillow can fail to read an image."""
    if isinstance(err, Image.DecompressionBombError):
        return ValueError(f"{path}: image too large to read safely ({err}); resize it before segmenting")
    if isinstance(err, UnidentifiedImageError):
        return ValueError(f"{path}: not a readable image file")
    return ValueError(f"{path}: cannot decode image ({err})")


def exif_orientation(image: Image.Image) -> int:
    """The image's EXIF orientation (1 = as stored; 2-8 = flipped and/or turned for display)."""
    try:
        return int(image.getexif().get(_EXIF_ORIENTATION_TAG, 1) or 1)
    except Exception:  # a corrupt EXIF block is not worth refusing the frame for
        return 1


def displayed_size(image: Image.Image) -> tuple[int, int]:
    """``(height, width)`` of the image as a viewer shows it (EXIF orientation applied)."""
    if exif_orientation(image) in _TRANSPOSING_ORIENTATIONS:
        return image.width, image.height
    return image.height, image.width


def _to_rgb(image: Image.Image) -> np.ndarray:
    """(H, W, 3) uint8 RGB of any Pillow mode, scaling high bit depths instead of clipping them."""
    if image.mode == "RGB":
        return np.array(image)
    if image.mode in _HIGH_DEPTH_MAX or image.mode in ("I", "F"):
        # convert("RGB") clips 16-bit values at 255 (a 16-bit frame turns white): scale to 8 bits
        values = np.asarray(image, dtype=np.float64)
        top: float | None = _HIGH_DEPTH_MAX.get(image.mode)
        if top is None:  # 32-bit int or float: 8-bit range if it fits, else 16-bit, else its own maximum
            high = float(values.max(initial=0))
            top = 255 if high <= 255 else 65535 if high <= 65535 else high
        gray = np.clip(np.rint(values * (255.0 / top)), 0, 255).astype(np.uint8)
        return np.repeat(gray[..., None], 3, axis=2)
    return np.array(image.convert("RGB"))


def read_frame(path: PathLike) -> np.ndarray:
    """Read an image file as a (H, W, 3) uint8 RGB array (alpha dropped, gray expanded).

    EXIF orientation is applied (pixels come out as a viewer shows them, as do masks read by
    :mod:`pcvos.data.masks`); 16-bit images are scaled to 8 bits.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: frame file not found")
    try:
        with Image.open(path) as image:
            return _to_rgb(ImageOps.exif_transpose(image) if exif_orientation(image) != 1 else image)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
        raise _image_error(path, err) from err


# Declared frames that an MP4 edit list may hide from decoding (encoder priming, B-frame delay):
# a strict reader tolerates this many missing frames with a warning.
EDIT_LIST_SLACK = 2


class VideoDecodeError(ValueError):
    """A video stream broke part-way. ``frame_index`` is the number of frames decoded before it."""

    def __init__(self, path: PathLike, frame_index: int, reason: str) -> None:
        self.path = Path(path)
        self.frame_index = frame_index
        self.reason = reason
        super().__init__(f"{self.path}: video decoding failed at frame {frame_index} ({reason})")


def _av_reason(err: BaseException) -> str:
    return getattr(err, "strerror", None) or str(err)


@runtime_checkable
class FrameSource(Protocol):
    """What :func:`open_frames` returns: iterable (H, W, 3) uint8 RGB frames with a few facts."""

    @property
    def fps(self) -> float | None: ...

    @property
    def size(self) -> tuple[int, int]: ...

    def __iter__(self) -> Iterator[np.ndarray]: ...

    def __len__(self) -> int: ...


_EBML_MAGIC = b"\x1a\x45\xdf\xa3"  # Matroska / WebM
_EBML_SEGMENT = b"\x18\x53\x80\x67"
_ISO_BOXES = {b"ftyp", b"moov", b"mdat", b"free", b"skip", b"wide", b"pnot", b"uuid", b"moof"}  # MP4 / MOV


def _read_vint(f, keep_marker: bool) -> tuple[int, int] | None:
    """One EBML variable-length integer: ``(value, its length in bytes)``; None if unreadable."""
    first = f.read(1)
    if not first:
        return None
    length = 9 - first[0].bit_length()
    if not 1 <= length <= 8:
        return None
    rest = f.read(length - 1)
    if len(rest) != length - 1:
        return None
    value = first[0] if keep_marker else first[0] & (0xFF >> length)
    for b in rest:
        value = (value << 8) | b
    return value, length


def _ebml_truncated(f, file_size: int) -> bool:
    header = _read_vint(f, keep_marker=False)  # size of the EBML header (its id was the magic)
    if header is None:
        return False
    f.seek(header[0], os.SEEK_CUR)
    if f.read(4) != _EBML_SEGMENT:
        return False
    size = _read_vint(f, keep_marker=False)
    if size is None:
        return False
    value, length = size
    if value == (1 << (7 * length)) - 1:  # "unknown size" (live streams): nothing to compare
        return False
    return f.tell() + value > file_size


def _iso_truncated(f, file_size: int) -> bool:
    offset = 0
    while offset + 8 <= file_size:
        f.seek(offset)
        head = f.read(8)
        size, kind = int.from_bytes(head[:4], "big"), head[4:]
        if offset == 0 and kind not in _ISO_BOXES:
            return False  # not an ISO media file
        if size == 1:
            size = int.from_bytes(f.read(8), "big")
        elif size == 0:  # the last box runs to the end of the file
            return False
        if size < 8:
            return False  # malformed: FFmpeg's own error will say so
        offset += size
    return offset > file_size


def container_truncated(path: PathLike) -> bool:
    """Whether the container says the file is cut short: its declared sizes run past the file's end.

    Checks the Matroska/WebM segment size, the top-level boxes of MP4/MOV and AVI's RIFF size;
    other containers (and live-stream files of unknown size) report False.
    """
    path = Path(path)
    try:
        file_size = path.stat().st_size
        with open(path, "rb") as f:
            magic = f.read(4)
            if magic == _EBML_MAGIC:
                return _ebml_truncated(f, file_size)
            if magic == b"RIFF":
                riff = f.read(8)
                return (
                    len(riff) == 8
                    and riff[4:] == b"AVI "
                    and 8 + int.from_bytes(riff[:4], "little") > file_size
                )
            f.seek(0)
            return _iso_truncated(f, file_size)
    except OSError:
        return False


class VideoReader:
    """Lazily decodes a video file with PyAV into (H, W, 3) uint8 RGB frames.

    Opening checks the file and decodes its first frame, so a missing file
    (``FileNotFoundError``), a file that is not a video or has no decodable video frame
    (``ValueError``) fail here. Each ``iter()`` decodes from the start and holds the file open only
    while iterating. A stream that breaks part-way raises :class:`VideoDecodeError` with the
    number of frames decoded before the break.

    Frames come out as a player shows them: a rotation in the stream's display matrix (phone
    videos) is applied, so ``size`` is the displayed ``(height, width)`` and ``rotation`` the
    counter-clockwise degrees applied.

    Attributes: ``path``, ``fps`` (float or None), ``size``, ``rotation``, ``num_frames`` (from
    the container header when it declares one, else estimated from the duration, else None; an
    estimate can be well off for variable frame rates or a longer audio track — iteration is the
    truth), ``num_frames_exact`` (True when the container declared the count), ``frames_read``
    (frames yielded by the last complete iteration).

    A file is called truncated only when the container says so: its declared sizes run past the
    end of the file (:func:`container_truncated`), or it declares a frame count and the stream
    ends more than ``EDIT_LIST_SLACK`` frames short (MP4 edit lists can hide a few). An estimate is
    never held against the file. A truncated file gives a ``RuntimeWarning`` after its last
    frame, or a :class:`VideoDecodeError` with ``strict=True``; a small declared-count gap stays
    a warning.
    """

    def __init__(self, path: PathLike, *, strict: bool = False) -> None:
        self.path = Path(path)
        self.strict = strict
        if not self.path.exists():
            raise FileNotFoundError(f"{self.path}: video file not found")
        if self.path.is_dir():
            raise IsADirectoryError(f"{self.path}: is a folder, not a video file (use open_frames)")
        self.frames_read: int | None = None
        with contextlib.closing(self._open()) as container:
            if not container.streams.video:
                cut = (
                    " (the file is truncated: its container declares more data than it holds)"
                    if container_truncated(self.path)
                    else ""
                )
                raise ValueError(f"{self.path}: no video stream in this file{cut}")
            stream = container.streams.video[0]
            rate = stream.average_rate or stream.guessed_rate or stream.base_rate
            self.fps: float | None = float(rate) if rate else None
            self.num_frames_exact = bool(stream.frames and stream.frames > 0)
            self.num_frames: int | None = int(stream.frames) if self.num_frames_exact else None
            if self.num_frames is None and self.fps:
                seconds = None
                if stream.duration and stream.time_base:
                    seconds = float(stream.duration * stream.time_base)
                elif container.duration:
                    seconds = container.duration / av.time_base
                if seconds:
                    self.num_frames = max(1, round(seconds * self.fps))
            first = self._first_frame(container, stream)
        self._stored = (first.height, first.width)
        self._turns = round(float(getattr(first, "rotation", 0) or 0) / 90) % 4  # quarter turns, CCW
        self.rotation = 90 * self._turns
        self.size: tuple[int, int] = self._stored[::-1] if self._turns % 2 else self._stored
        self.truncated = container_truncated(self.path)

    def _open(self) -> av.container.InputContainer:
        try:
            return av.open(str(self.path), mode="r")
        except av.FFmpegError as err:
            raise ValueError(
                f"{self.path}: not a readable video file (FFmpeg: {_av_reason(err)}; "
                "is it truncated, or not a video?)"
            ) from err

    def _first_frame(self, container: av.container.InputContainer, stream: av.VideoStream) -> av.VideoFrame:
        try:
            for frame in container.decode(stream):
                return frame
        except av.FFmpegError as err:
            raise VideoDecodeError(self.path, 0, _av_reason(err)) from err
        raise ValueError(f"{self.path}: the video stream holds no decodable frames")

    def __iter__(self) -> Iterator[np.ndarray]:
        height, width = self._stored
        index = 0
        with contextlib.closing(self._open()) as container:
            stream = container.streams.video[0]
            decoded = container.decode(stream)
            while True:
                try:
                    frame = next(decoded)
                except StopIteration:
                    break
                except av.FFmpegError as err:
                    raise VideoDecodeError(self.path, index, _av_reason(err)) from err
                if frame.height != height or frame.width != width:  # resolution change mid-stream
                    frame = frame.reformat(width=width, height=height)
                array: np.ndarray = frame.to_ndarray(format="rgb24")
                if self._turns:
                    array = np.ascontiguousarray(np.rot90(array, self._turns))
                yield array
                index += 1
        self.frames_read = index
        if index == 0 and not self.truncated:
            raise ValueError(f"{self.path}: the video stream holds no decodable frames")
        message = None
        if self.truncated:
            message = (
                f"the file ends before the end its container declares, after {index} frames (truncated file?)"
            )
        elif self.num_frames_exact and self.num_frames is not None and index < self.num_frames:
            message = (
                f"the stream ended after {index} frames but the container declares "
                f"{self.num_frames} (truncated file?)"
            )
        if message is None:
            return
        big_gap = self.truncated or index < (self.num_frames or 0) - EDIT_LIST_SLACK
        if self.strict and big_gap:
            raise VideoDecodeError(self.path, index, message)
        warnings.warn(f"{self.path}: {message}", RuntimeWarning, stacklevel=2)

    def __len__(self) -> int:
        if self.num_frames is None:
            raise TypeError(f"{self.path}: the number of frames is unknown until decoded")
        return self.num_frames

    def __repr__(self) -> str:
        return (
            f"VideoReader({str(self.path)!r}, size={self.size}, fps={self.fps}, num_frames={self.num_frames})"
        )


class FrameFolder:
    """A folder of frame images read lazily in natural order (see :func:`list_frames`).

    ``frame_paths``, ``names`` (file stems), ``fps`` (always None), ``size`` ``(height, width)`` of
    the first frame; ``len()``, iteration, and ``folder[i]`` for one frame. Iterating checks that
    every frame has the first frame's size.
    """

    fps: float | None = None

    def __init__(self, folder: PathLike) -> None:
        self.folder = Path(folder)
        self.frame_paths = list_frames(self.folder)
        self._size: tuple[int, int] | None = None

    @property
    def names(self) -> list[str]:
        return [p.stem for p in self.frame_paths]

    @property
    def size(self) -> tuple[int, int]:
        if self._size is None:
            path = self.frame_paths[0]
            try:
                with Image.open(path) as image:
                    self._size = displayed_size(image)
            except (
                UnidentifiedImageError,
                OSError,
                SyntaxError,
                ValueError,
                Image.DecompressionBombError,
            ) as err:
                raise _image_error(path, err) from err
        return self._size

    def __len__(self) -> int:
        return len(self.frame_paths)

    def __getitem__(self, index: int) -> np.ndarray:
        return read_frame(self.frame_paths[index])

    def __iter__(self) -> Iterator[np.ndarray]:
        for path in self.frame_paths:
            frame = read_frame(path)
            if frame.shape[:2] != self.size:
                raise ValueError(
                    f"{path}: frame size {frame.shape[0]}x{frame.shape[1]} differs from the first "
                    f"frame's {self.size[0]}x{self.size[1]}"
                )
            yield frame

    def __repr__(self) -> str:
        return f"FrameFolder({str(self.folder)!r}, {len(self)} frames)"


def open_frames(input_path: PathLike, *, strict: bool = False) -> VideoReader | FrameFolder:
    """Open a video file (mp4/mov/avi/webm/mkv, or anything FFmpeg reads) or a folder of frames.

    The result iterates (H, W, 3) uint8 RGB frames and has ``.fps`` (None for folders), ``.size``
    ``(height, width)`` and ``len()`` (``TypeError`` for a video whose length is unknown).
    ``strict``: a video that ends well short of its declared length raises (see :class:`VideoReader`).
    """
    path = Path(input_path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: input not found (expected a video file or a folder of frames)")
    if path.is_dir():
        return FrameFolder(path)
    if path.suffix.lower() in IMAGE_EXTENSIONS:
        raise ValueError(
            f"{path}: a single image, not a video; put the frames in a folder and pass the folder"
        )
    try:
        return VideoReader(path, strict=strict)
    except VideoDecodeError:
        raise
    except ValueError as err:
        if path.suffix.lower() in VIDEO_EXTENSIONS:
            raise
        raise ValueError(f"{path}: neither a readable video file nor a folder of frames ({err})") from err


def _pick_codec(suffix: str) -> str:
    if suffix == ".webm":
        candidates = ("libvpx-vp9", "libvpx")
    else:
        candidates = ("libx264", "mpeg4")
    for name in candidates:
        try:
            av.codec.Codec(name, "w")
            return name
        except Exception:  # codec not built into this FFmpeg
            continue
    raise RuntimeError(f"none of the video encoders {candidates} is available in this PyAV build")


class VideoWriter:
    """Writes (H, W, 3) uint8 RGB frames to a video file with PyAV; use it as a context manager.

    ``VideoWriter(path, fps, size=None, *, codec=None, options=None)``: ``size`` is
    ``(height, width)``; when None it is taken from the first frame. The codec is libx264 (CRF 18)
    when available, else mpeg4 (``.webm``: VP9/VP8), pixel format yuv420p. yuv420p needs even
    sizes, so odd heights/widths are padded by one replicated row/column.

    Frames go to a hidden temporary file in the destination folder, renamed onto ``path`` by
    ``close()``; on an exception inside the ``with`` block (or ``abort()``) the temporary file is
    deleted, so no half-written video is ever left under ``path``.
    """

    def __init__(
        self,
        path: PathLike,
        fps: float,
        size: tuple[int, int] | None = None,
        *,
        codec: str | None = None,
        options: dict[str, str] | None = None,
    ) -> None:
        self.path = Path(path)
        if not fps or fps <= 0:
            raise ValueError(f"{self.path}: fps must be positive, got {fps}")
        self.fps = float(fps)
        self._rate = Fraction(self.fps).limit_denominator(1001)
        self.size = None if size is None else (int(size[0]), int(size[1]))
        if self.size is not None and min(self.size) <= 0:
            raise ValueError(f"{self.path}: size must be a positive (height, width), got {size}")
        self.codec = codec or _pick_codec(self.path.suffix.lower())
        if options is None:
            options = {"crf": "18", "preset": "medium"} if self.codec == "libx264" else {}
        self.options = options
        self.frames_written = 0
        self._closed = False
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._tmp = temp_path_for(self.path)
        try:
            self._container = av.open(str(self._tmp), mode="w")
        except (av.FFmpegError, ValueError) as err:
            with contextlib.suppress(OSError):
                self._tmp.unlink()
            raise ValueError(f"{self.path}: cannot create a video file of this type ({err})") from err
        self._stream: av.VideoStream | None = None

    def _open_stream(self, height: int, width: int) -> av.VideoStream:
        stream = self._container.add_stream(self.codec, rate=self._rate)
        if not isinstance(stream, av.VideoStream):
            raise ValueError(f"{self.path}: codec {self.codec!r} does not encode video")
        stream.height, stream.width = height + height % 2, width + width % 2
        stream.pix_fmt = "yuv420p"
        if self.options:
            stream.options = dict(self.options)
        if self.codec in ("mpeg4", "libvpx", "libvpx-vp9"):
            stream.bit_rate = max(1_000_000, int(stream.width * stream.height * self.fps * 0.2))
        return stream

    def write(self, frame: np.ndarray) -> None:
        """Encode one (H, W, 3) uint8 RGB frame."""
        if self._closed:
            raise ValueError(f"{self.path}: writer is closed")
        frame = np.asarray(frame)
        if frame.ndim != 3 or frame.shape[2] != 3 or frame.dtype != np.uint8:
            raise ValueError(
                f"{self.path}: frames must be (H, W, 3) uint8 RGB, "
                f"got shape {frame.shape} dtype {frame.dtype}"
            )
        if self.size is None:
            self.size = (frame.shape[0], frame.shape[1])
        if frame.shape[:2] != self.size:
            raise ValueError(
                f"{self.path}: frame {self.frames_written} is {frame.shape[0]}x{frame.shape[1]}, "
                f"expected {self.size[0]}x{self.size[1]}"
            )
        if self._stream is None:
            self._stream = self._open_stream(*self.size)
        pad_h, pad_w = self.size[0] % 2, self.size[1] % 2
        if pad_h or pad_w:
            frame = np.pad(frame, ((0, pad_h), (0, pad_w), (0, 0)), mode="edge")
        video_frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")
        video_frame.pts = self.frames_written
        video_frame.time_base = 1 / self._rate
        for packet in self._stream.encode(video_frame):
            self._container.mux(packet)
        self.frames_written += 1

    def close(self) -> Path:
        """Flush the encoder, finish the file and move it to ``path``. Returns ``path``."""
        if self._closed:
            return self.path
        try:
            if self._stream is None:
                raise ValueError(f"{self.path}: no frames were written")
            for packet in self._stream.encode(None):
                self._container.mux(packet)
            self._container.close()
            self._closed = True
            os.replace(self._tmp, self.path)
        except BaseException:
            self.abort()
            raise
        return self.path

    def abort(self) -> None:
        """Discard everything written so far; ``path`` is left untouched."""
        if not self._closed:
            self._closed = True
            with contextlib.suppress(Exception):
                self._container.close()
        with contextlib.suppress(OSError):
            self._tmp.unlink()

    def __enter__(self) -> VideoWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()

    def __del__(self) -> None:  # a writer dropped without close() leaves no temporary file
        if not getattr(self, "_closed", True):
            self.abort()
