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
from typing import Protocol, Union, runtime_checkable

import av
import numpy as np
from PIL import Image, UnidentifiedImageError

from pcvos.data.io_utils import PathLike, temp_path_for

__all__ = [
    "IMAGE_EXTENSIONS",
    "VIDEO_EXTENSIONS",
    "natural_key",
    "list_frames",
    "read_frame",
    "VideoDecodeError",
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


def read_frame(path: PathLike) -> np.ndarray:
    """Read an image file as a (H, W, 3) uint8 RGB array (alpha dropped, gray expanded).

    EXIF orientation is not applied: pixels are returned as stored, like the masks.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: frame file not found")
    try:
        with Image.open(path) as image:
            if image.mode != "RGB":
                image = image.convert("RGB")
            return np.array(image)
    except UnidentifiedImageError as err:
        raise ValueError(f"{path}: not a readable image file") from err
    except (OSError, SyntaxError) as err:
        raise ValueError(f"{path}: cannot decode image ({err})") from err


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


class VideoReader:
    """Lazily decodes a video file with PyAV into (H, W, 3) uint8 RGB frames.

    Opening checks the file and decodes its first frame, so a missing file
    (``FileNotFoundError``), a file that is not a video or has no decodable video frame
    (``ValueError``) fail here. Each ``iter()`` decodes from the start and holds the file open only
    while iterating. A stream that breaks part-way raises :class:`VideoDecodeError` with the
    number of frames decoded before the break.

    Attributes: ``path``, ``fps`` (float or None), ``size`` ``(height, width)``, ``num_frames``
    (from the container header when it declares one, else estimated from the duration, else
    None; may be off by a frame or two for estimates — iteration is the truth),
    ``num_frames_exact`` (True when the container declared the count), ``frames_read`` (frames
    yielded by the last complete iteration).

    If the stream ends cleanly but with fewer frames than the container declares (or, for an
    estimate, more than 5 % / 2 frames fewer), a ``RuntimeWarning`` is issued. With
    ``strict=True`` a :class:`VideoDecodeError` is raised instead once more than
    ``EDIT_LIST_SLACK`` declared frames are missing; a smaller gap stays a warning. Not an error
    by default because MP4 edit lists can legitimately hide a few declared frames and a longer
    audio track inflates the duration used for estimates. (A truncated MKV/WebM, and sometimes a
    truncated MP4, decodes without any FFmpeg error; only this check notices it.)
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
                raise ValueError(f"{self.path}: no video stream in this file")
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
        self.size: tuple[int, int] = (first.height, first.width)

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
        height, width = self.size
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
                yield frame.to_ndarray(format="rgb24")
                index += 1
        self.frames_read = index
        if index == 0:
            raise ValueError(f"{self.path}: the video stream holds no decodable frames")
        expected = self.num_frames
        if expected is not None:
            tolerance = 0 if self.num_frames_exact else max(2, round(0.05 * expected))
            if index < expected - tolerance:
                declared = "declares" if self.num_frames_exact else "suggests about"
                message = (
                    f"the stream ended after {index} frames but the container {declared} "
                    f"{expected} (truncated file?)"
                )
                if self.strict and (not self.num_frames_exact or index < expected - EDIT_LIST_SLACK):
                    raise VideoDecodeError(self.path, index, message)
                warnings.warn(f"{self.path}: {message}", RuntimeWarning, stacklevel=2)

    def __len__(self) -> int:
        if self.num_frames is None:
            raise TypeError(f"{self.path}: the number of frames is unknown until decoded")
        return self.num_frames

    def __repr__(self) -> str:
        return f"VideoReader({str(self.path)!r}, size={self.size}, fps={self.fps}, num_frames={self.num_frames})"


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
                    self._size = (image.height, image.width)
            except (OSError, SyntaxError) as err:
                raise ValueError(f"{path}: not a readable image file") from err
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


def open_frames(input_path: PathLike, *, strict: bool = False) -> Union[VideoReader, FrameFolder]:
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
        raise ValueError(f"{path}: a single image, not a video; put the frames in a folder and pass the folder")
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
                f"{self.path}: frames must be (H, W, 3) uint8 RGB, got shape {frame.shape} dtype {frame.dtype}"
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
