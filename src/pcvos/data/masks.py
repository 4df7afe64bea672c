"""Reading annotation masks into (H, W) uint8 label maps.

Accepted mask files (``read_mask`` / ``parse_mask(path, mode="auto")``):

* **Indexed PNG** (Pillow mode ``P``, DAVIS 2017 / YouTube-VOS): the palette indices are the
  labels, kept as they are (ids need not be contiguous; 255 = void stays 255).
* **Grayscale** (modes ``L``, ``LA``, ``1``, ``I;16``, ``I`` with values <= 255):

  - values within {0, 255} (DAVIS 2016) → 0/1 (255 → 1);
  - values within {0, 1} → kept;
  - otherwise it is accepted as an **id map** only if it looks like one: at most
    ``MAX_GRAY_IDS`` (32) distinct values, all below ``GRAY_ID_LIMIT`` (128) except 255 (void).
    Anything else (anti-aliased or soft masks, photos, ids stretched for display such as
    0/128/255) is rejected with an error that says so, instead of guessing.
* **RGB / RGBA colour masks**: see :func:`read_color_mask`.

Any other image mode (CMYK, YCbCr, float, …) raises ``ValueError``.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Literal

import cv2
import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from pcvos.data.frames import exif_orientation
from pcvos.data.io_utils import PathLike
from pcvos.data.palette import DAVIS_PALETTE, VOID_LABEL

__all__ = [
    "MaskMode",
    "MAX_GRAY_IDS",
    "GRAY_ID_LIMIT",
    "MAX_COLOUR_OBJECTS",
    "BLEND_TOLERANCE",
    "EDGE_MAX_FRACTION",
    "read_mask",
    "read_color_mask",
    "parse_mask",
    "resize_labels",
    "object_ids",
]

MaskMode = Literal["auto", "indexed", "binary", "ids", "color"]

#: A grayscale image that is neither 0/255 nor 0/1 is read as an id map only with at most this
#: many distinct values ...
MAX_GRAY_IDS = 32
#: ... all of them (255 = void excepted) below this value.
GRAY_ID_LIMIT = 128
#: Most distinct non-black colours a colour mask may hold (label 255 is reserved for void).
MAX_COLOUR_OBJECTS = 254
#: In a colour mask, a colour that covers less than ``EDGE_MAX_FRACTION`` of the pixels, has no
#: solid pixel (one whose 8 neighbours share its colour) and lies within ``BLEND_TOLERANCE`` (RGB
#: distance) of a solid colour or of a blend of two (black included) is an anti-aliased edge, not an
#: object: it is merged into the nearest solid colour, with a warning.
EDGE_MAX_FRACTION = 0.01
BLEND_TOLERANCE = 48.0  # resampling filters (Lanczos) overshoot a blend by up to ~25
# Above this many (edge colour x colour pair) distances, only the nearest solid colour is tested
_MAX_BLEND_TESTS = 5_000_000
_BLEND_CHUNK = 4_000_000
_MAX_16BIT = 65535

_GRAY_MODES = ("L", "LA", "1", "I", "I;16", "I;16L", "I;16B", "I;16N")
_COLOUR_MODES = ("RGB", "RGBA", "RGBX")


def _open_image(path: PathLike) -> Image.Image:
    """Open and fully load an image, turning Pillow's errors into ones that name the file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: mask file not found")
    try:
        image: Image.Image = Image.open(path)
        image.load()
        if exif_orientation(image) != 1:  # the mask as a viewer shows it, like the frames
            image = ImageOps.exif_transpose(image)
    except UnidentifiedImageError as err:
        raise ValueError(f"{path}: not a readable image file") from err
    except Image.DecompressionBombError as err:
        raise ValueError(f"{path}: image too large to read safely ({err})") from err
    except (OSError, SyntaxError, ValueError) as err:  # truncated or corrupt data
        raise ValueError(f"{path}: cannot decode image ({err})") from err
    return image


def object_ids(labels: np.ndarray) -> list[int]:
    """Sorted object ids present in a label map (0 = background and 255 = void excluded)."""
    counts = np.bincount(np.asarray(labels, dtype=np.uint8).ravel(), minlength=256)
    return [int(i) for i in np.flatnonzero(counts) if i not in (0, VOID_LABEL)]


def _gray_array(image: Image.Image, path: PathLike) -> np.ndarray:
    if image.mode == "1":
        return np.asarray(image, dtype=np.uint8)
    if image.mode == "LA":
        image = image.getchannel("L")
    array = np.asarray(image)
    if array.dtype != np.uint8:
        if array.size and set(np.unique(array).tolist()) <= {0, _MAX_16BIT}:  # a 16-bit binary mask
            return np.where(array > 0, 255, 0).astype(np.uint8)
        if array.size and (array.min() < 0 or array.max() > 255):
            raise ValueError(
                f"{path}: {image.mode} grayscale mask has values {array.min()}..{array.max()}, "
                "outside 0..255; save it as an 8-bit indexed or grayscale PNG"
            )
        array = array.astype(np.uint8)
    return array


def _gray_to_labels(array: np.ndarray, path: PathLike) -> tuple[np.ndarray, str]:
    counts = np.bincount(array.ravel(), minlength=256)
    values = np.flatnonzero(counts)
    present = set(values.tolist())
    if present <= {0, 255}:
        return (array == 255).astype(np.uint8), "grayscale 0/255 mask → 0/1"
    if present <= {0, 1}:
        return array.copy(), "grayscale 0/1 mask"
    ids = [v for v in present if v != VOID_LABEL]
    if len(present) <= MAX_GRAY_IDS and max(ids) < GRAY_ID_LIMIT:
        return array.copy(), "grayscale id map"
    raise ValueError(
        f"{path}: grayscale mask with {len(present)} distinct values ({values.min()}..{values.max()}) "
        f"is neither binary (0/255 or 0/1) nor an id map (at most {MAX_GRAY_IDS} values, ids below "
        f"{GRAY_ID_LIMIT}, 255 = void); threshold it or save it as an indexed PNG"
    )


def _colour_codes(rgb: np.ndarray) -> np.ndarray:
    rgb = rgb.astype(np.uint32)
    return (rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2]


_DAVIS_CODES = _colour_codes(DAVIS_PALETTE)  # all 256 distinct
_DAVIS_ORDER = np.argsort(_DAVIS_CODES)
_DAVIS_SORTED = _DAVIS_CODES[_DAVIS_ORDER]


def _solid_codes(codes: np.ndarray) -> np.ndarray:
    """Colour codes that have at least one pixel whose 8 neighbours all share its colour."""
    h, w = codes.shape
    centre = codes[1:-1, 1:-1]
    solid = np.ones(centre.shape, dtype=bool)
    for dy in range(3):
        for dx in range(3):
            if (dy, dx) != (1, 1):
                solid &= codes[dy : dy + h - 2, dx : dx + w - 2] == centre
    return np.unique(centre[solid])


def _code_rgb(codes: np.ndarray) -> np.ndarray:
    codes = np.asarray(codes, dtype=np.uint32)
    return np.stack([(codes >> 16) & 255, (codes >> 8) & 255, codes & 255], axis=-1).astype(np.float32)


def _blend_distance(colours: np.ndarray, refs: np.ndarray) -> np.ndarray:
    """RGB distance of each colour to the nearest segment between two reference colours."""
    i, j = np.triu_indices(len(refs), k=1)
    a, ab = refs[i], refs[j] - refs[i]  # (P, 3)
    length2 = np.maximum((ab * ab).sum(-1), 1e-6)
    best = np.full(len(colours), np.inf, dtype=np.float32)
    step = max(1, _BLEND_CHUNK // max(1, len(a)))
    for start in range(0, len(colours), step):
        x = colours[start : start + step, None, :]  # (M, 1, 3)
        t = np.clip(((x - a) * ab).sum(-1) / length2, 0, 1)
        d = np.sqrt((((a + t[..., None] * ab) - x) ** 2).sum(-1))
        best[start : start + step] = d.min(axis=1)
    return best


def _merge_edge_colours(codes: np.ndarray, path: PathLike) -> tuple[np.ndarray, str | None]:
    """Merge anti-aliased edge colours into the nearest solid colour (see ``BLEND_TOLERANCE``).

    Returns the new codes and a warning to give if the mask is then accepted.
    """
    if min(codes.shape) < 3:
        return codes, None
    unique, inverse, counts = np.unique(codes.ravel(), return_inverse=True, return_counts=True)
    solid = np.union1d(_solid_codes(codes), [0])  # black is always a reference: edges fade into it
    edge = ~np.isin(unique, solid) & (counts < EDGE_MAX_FRACTION * codes.size)
    if not edge.any() or len(solid) > MAX_COLOUR_OBJECTS + 1:  # too many solid colours: not a mask at all
        return codes, None
    refs = _code_rgb(solid)
    candidates = _code_rgb(unique[edge])
    step = max(1, _BLEND_CHUNK // len(refs))
    nearest_ref = np.empty(len(candidates), dtype=np.int64)
    distance = np.empty(len(candidates), dtype=np.float32)
    for start in range(0, len(candidates), step):
        d = np.sqrt(((candidates[start : start + step, None, :] - refs[None]) ** 2).sum(-1))  # (M, K)
        nearest_ref[start : start + step] = d.argmin(axis=1)
        distance[start : start + step] = d.min(axis=1)
    pairs = len(refs) * (len(refs) - 1) // 2
    far = np.flatnonzero(distance > BLEND_TOLERANCE)
    if pairs and 0 < pairs * len(far) <= _MAX_BLEND_TESTS:
        distance[far] = np.minimum(distance[far], _blend_distance(candidates[far], refs))
    merge = distance <= BLEND_TOLERANCE
    if not merge.any():
        return codes, None
    target = unique.copy()
    edge_index = np.flatnonzero(edge)[merge]
    target[edge_index] = solid[nearest_ref[merge]]
    pixels = int(counts[edge_index].sum())
    note = (
        f"{path}: {len(edge_index)} colours ({pixels} pixels, {pixels / codes.size:.1%} of the mask) have no "
        "solid area and lie between object colours: read as anti-aliased edges and merged into the nearest "
        "object colour (save masks without anti-aliasing to avoid this)"
    )
    return target[inverse].reshape(codes.shape), note


def _rgb_to_labels(
    rgb: np.ndarray, path: PathLike, palette: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray, str]:
    codes, note = _merge_edge_colours(_colour_codes(rgb), path)
    unique, inverse = np.unique(codes.ravel(), return_inverse=True)
    non_black = int((unique != 0).sum())
    if non_black > MAX_COLOUR_OBJECTS:
        raise ValueError(
            f"{path}: RGB mask has {non_black} distinct non-black colours, more than the "
            f"{MAX_COLOUR_OBJECTS} objects a mask can hold (is it a photo rather than a mask?)"
        )
    if palette is not None:
        palette = np.asarray(palette, dtype=np.uint8).reshape(-1, 3)
        table = [(0, 0, 0)] + [tuple(int(v) for v in row) for row in palette[1:]]
        known: dict[int, int] = {}
        for i, code in enumerate(_colour_codes(palette).tolist()):
            if i > 0 and code != 0:
                known.setdefault(code, i)
        label_of = np.zeros(len(unique), dtype=np.int64)
        for k, code in enumerate(unique.tolist()):
            if code == 0:
                continue
            if code not in known:
                if len(table) > MAX_COLOUR_OBJECTS:
                    raise ValueError(f"{path}: colour table would exceed {MAX_COLOUR_OBJECTS} objects")
                known[code] = len(table)
                table.append(((code >> 16) & 255, (code >> 8) & 255, code & 255))
            label_of[k] = known[code]
        colours = np.array(table, dtype=np.uint8)
        kind = "RGB colour mask (ids from the given colour table)"
    else:
        pos = np.minimum(np.searchsorted(_DAVIS_SORTED, unique), 255)
        in_davis = _DAVIS_SORTED[pos] == unique
        if in_davis.all():
            label_of = _DAVIS_ORDER[pos]
            top = int(label_of.max()) if len(label_of) else 0
            colours = DAVIS_PALETTE[: top + 1].copy()
            kind = "RGB mask in DAVIS palette colours (ids from the palette)"
        else:
            label_of = np.cumsum(unique != 0) * (unique != 0)  # black → 0, others 1..K sorted
            colours = np.zeros((non_black + 1, 3), dtype=np.uint8)
            others = unique[unique != 0]
            colours[1:, 0] = (others >> 16) & 255
            colours[1:, 1] = (others >> 8) & 255
            colours[1:, 2] = others & 255
            kind = "RGB colour mask (ids 1..K in sorted colour order)"
    labels = np.asarray(label_of, dtype=np.uint8)[inverse].reshape(codes.shape)
    if note is not None:
        warnings.warn(note, stacklevel=4)
    return labels, colours, kind


def _rgb_array(image: Image.Image) -> np.ndarray:
    """RGB pixels of an image; fully transparent pixels of RGBA / PA images count as black."""
    alpha = None
    if image.mode in ("RGBA", "PA", "LA") or "transparency" in image.info:
        rgba = np.asarray(image.convert("RGBA"))
        rgb, alpha = rgba[..., :3].copy(), rgba[..., 3]
    else:
        rgb = np.asarray(image.convert("RGB")).copy()
    if alpha is not None:
        rgb[alpha == 0] = 0
    return rgb


def read_color_mask(path: PathLike, colours: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Read an RGB(A) colour mask: each distinct non-black colour is one object, black is background.

    Returns ``(labels, colours)``: ``labels`` (H, W) uint8 and ``colours`` (N, 3) uint8 where
    ``colours[k]`` is the colour of label ``k`` (``colours[0]`` is black).

    Id assignment, so that ids stay the same across the frames of a video:

    * ``colours`` given (the table returned for an earlier frame of the video): colours found in
      it keep their row index as id; new colours get the next ids, in sorted colour order (the
      returned table is then the extended one).
    * otherwise, if every colour is a DAVIS palette colour (an indexed mask saved as RGB), the ids
      are the palette indices (so (224, 224, 192) → 255 = void);
    * otherwise ids 1..K follow sorted colour order (by R, then G, then B).

    Fully transparent pixels count as background. More than 254 non-black colours → ``ValueError``.
    """
    image = _open_image(path)
    if image.mode not in _COLOUR_MODES + ("P", "PA") + _GRAY_MODES:
        raise ValueError(f"{path}: expected an RGB colour mask, got mode {image.mode}")
    labels, table, _ = _rgb_to_labels(_rgb_array(image), path, colours)
    return labels, table


def parse_mask(path: PathLike, mode: MaskMode = "auto") -> tuple[np.ndarray, str]:
    """Read a mask file into a (H, W) uint8 label map and say what kind of mask it was.

    ``mode``:

    * ``"auto"`` (default): by the image mode, as described in this module's docstring.
    * ``"indexed"``: require an indexed (``P``) PNG; the indices are the labels.
    * ``"binary"``: one object: non-zero (grayscale values >= 128 for 8-bit masks with values
      above 1), non-black (RGB) or non-zero index (``P``) → 1; index 255 of a ``P`` mask stays void.
    * ``"ids"``: pixel values (grayscale) or indices (``P``) are the labels, unchanged.
    * ``"color"``: colour mask rules of :func:`read_color_mask` for any image mode.

    Returns ``(labels, description)``; the description is a short line for logs, e.g.
    ``"indexed PNG; objects [1, 2]; void present"``.
    """
    if mode not in ("auto", "indexed", "binary", "ids", "color"):
        raise ValueError(f"unknown mask mode {mode!r}; use auto, indexed, binary, ids or color")
    image = _open_image(path)
    kind = image.mode
    if kind not in _GRAY_MODES + _COLOUR_MODES + ("P", "PA"):
        raise ValueError(f"{path}: expected an indexed, grayscale or RGB mask, got mode {kind}")

    if mode == "color":
        labels, _, what = _rgb_to_labels(_rgb_array(image), path, None)
    elif mode == "indexed" and kind not in ("P", "PA"):
        raise ValueError(f"{path}: expected an indexed (P mode) PNG, got mode {kind}")
    elif kind in ("P", "PA"):
        labels = np.asarray(image.getchannel("P") if kind == "PA" else image, dtype=np.uint8).copy()
        what = "indexed PNG"
        if mode == "binary":
            labels = np.where(labels == VOID_LABEL, VOID_LABEL, labels != 0).astype(np.uint8)
            what = "indexed PNG as binary"
    elif kind in _GRAY_MODES:
        array = _gray_array(image, path)
        if mode == "ids":
            labels, what = array.copy(), "grayscale id map"
        elif mode == "binary":
            labels = (array >= 128 if array.max(initial=0) > 1 else array > 0).astype(np.uint8)
            what = "grayscale as binary"
        else:
            labels, what = _gray_to_labels(array, path)
    else:  # RGB(A)
        if mode == "ids":
            raise ValueError(f"{path}: mode 'ids' needs an indexed or grayscale mask, got mode {kind}")
        rgb = _rgb_array(image)
        if mode == "binary":
            labels, what = np.asarray(rgb.any(axis=-1), np.uint8), "RGB as binary"
        else:
            labels, _, what = _rgb_to_labels(rgb, path, None)

    ids = object_ids(labels)
    description = f"{what}; objects {ids}" + ("; void present" if (labels == VOID_LABEL).any() else "")
    return labels, description


def read_mask(path: PathLike) -> np.ndarray:
    """Read any supported mask file as a (H, W) uint8 label map (see :func:`parse_mask`, ``"auto"``)."""
    return parse_mask(path, "auto")[0]


def resize_labels(labels: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize a (H, W) label map to ``size = (height, width)`` by nearest neighbour.

    Uses OpenCV's ``INTER_NEAREST_EXACT`` (pixel-centre aligned, like Pillow's ``NEAREST``), so no
    new label values appear and the result is not shifted by half a pixel.
    """
    labels = np.asarray(labels)
    if labels.ndim != 2:
        raise ValueError(f"labels must be a 2-D (H, W) array, got shape {labels.shape}")
    height, width = (int(v) for v in size)
    if height <= 0 or width <= 0:
        raise ValueError(f"size must be a positive (height, width), got {size}")
    if labels.dtype == np.bool_:
        labels = labels.astype(np.uint8)
    if labels.dtype != np.uint8:
        raise ValueError(f"labels must be uint8, got dtype {labels.dtype}")
    if labels.shape == (height, width):
        return labels.copy()
    return cv2.resize(labels, (width, height), interpolation=cv2.INTER_NEAREST_EXACT)
