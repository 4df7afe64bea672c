"""From a box, a few clicks or nothing at all to a first mask.

A box, a first click and no prompt at all are answered by parts that ship with pcvos:

- a saliency map from U²-Net-p (``weights/u2netp.onnx``, run with onnxruntime on the CPU), on the
  box's crop (with some context around it) or on the whole frame;
- GrabCut (OpenCV) started from that map: certain object where the saliency is very high, certain
  background where it is near zero, probable object / background in between, certain object at
  positive clicks, certain background at negative clicks and outside the box. With a ``previous``
  mask, the previous mask takes the saliency's place on a crop around it (and should GrabCut then
  collapse, away from the previous mask, the saliency's certain labels are put back).
- a guided filter that snaps the upsampled answer to the full-resolution image's edges.

The object is then the connected parts of GrabCut's answer that hold a positive click (or, with
none, the largest part). Saliency is computed once per image and region and kept in a small cache,
so that each further click costs one GrabCut on a downscaled crop. The parameters below were
chosen on the first frames of the protocol's ``select`` and ``train`` sequences, never on ``report``
(docs/results/prompts.md).

Corrections (clicks with a ``previous`` mask) are answered by a small click network trained here
(:mod:`pcvos.inference.clicknet`, ``weights/clicknet.pt``, scripts/train_clicknet.py): it re-reads
the previous mask and every click on a crop around them instead of re-cutting colour models, so a
click no longer undoes earlier work (docs/results/clicknet.md). ``PromptParams(clicks="grabcut")``
keeps the GrabCut path for corrections too.
"""

from __future__ import annotations

import functools
import hashlib
import json
import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from pcvos.inference.clicknet import ClickNetModel, ClickNetParams
from pcvos.inference.mask_ops import components_with as _components_with
from pcvos.inference.mask_ops import guided_filter as _guided_filter
from pcvos.model.checkpoint import CheckpointError, sha256_of

_WEIGHTS_DIR = Path(__file__).resolve().parent.parent / "weights"
SALIENCY_MODEL = "u2netp"
#: the click network (pcvos.model.clicknet.ClickNet, fp16 state_dict; scripts/train_clicknet.py)
CLICK_MODEL = "clicknet"
#: torch threads for one click network call. One: on a 256x256 crop a second thread saves ~5 ms
#: on an idle 2-core CPU, but when another process holds the other core OpenMP's spin-waiting made
#: a 2-thread call 3-4x slower (0.15-0.18 s against 0.04-0.05 s, docs/results/clicknet.md)
CLICK_THREADS = 1
#: U²-Net-p's input side and normalisation (the network was trained on 320 x 320 ImageNet-normalised RGB)
SALIENCY_SIDE = 320
_MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
_STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)


@dataclass(frozen=True)
class PromptParams:
    """The knobs of :func:`mask_from_prompts`.

    The defaults were chosen on the first frames of the protocol's ``select`` and ``train``
    sequences, never on ``report`` (docs/results/prompts.md gives the comparison).
    """

    #: context kept around a box on each side, as a fraction of the box's side, for saliency and GrabCut
    box_margin: float = 0.4
    #: saliency at or above this is "probable object" for GrabCut, below it "probable background"
    fg_threshold: float = 0.5
    #: GrabCut works on the crop downscaled to at most this many pixels on its longer side (speed)
    grabcut_side: int = 320
    grabcut_iterations: int = 4
    #: radius of the certain-label disk around each click, as a fraction of the crop's shorter side
    click_radius: float = 0.02
    #: saliency at or above this is "certain object" (GrabCut cannot undo it); 1.0 or more: never
    sure_fg: float = 0.8
    #: saliency below this is "certain background"; 0 or less: never
    sure_bg: float = 0.02
    #: edge-aware upsampling of GrabCut's low-resolution answer (a guided filter on the full-resolution
    #: crop, He et al. 2010): radius in full-resolution pixels (0: plain bilinear) and regularisation
    guided_radius: int = 4
    guided_eps: float = 1e-3
    #: how a previous mask enters GrabCut: "prior" (it replaces the saliency), "probable" (it sets the
    #: probable labels, the saliency's certain ones stay) or "ignore" (every click re-cut from saliency)
    previous_mode: str = "prior"
    #: with previous_mode "prior": an answer that keeps less than this IoU with the previous mask
    #: (GrabCut collapsing onto a colour model) is redone with previous_mode "probable"; 0: never
    collapse_iou: float = 0.5
    #: with no prompt: the salient object is the saliency above this on the whole frame
    auto_threshold: float = 0.5
    #: with no prompt: GrabCut from the whole frame's saliency (as for a box covering the frame)
    auto_grabcut: bool = False
    #: who answers clicks: "net" (the click network, weights/clicknet.pt) or "grabcut" (the saliency
    #: and GrabCut path above, as before the network)
    clicks: str = "net"
    #: with clicks "net": a first click (no previous mask yet) is answered by "grabcut" or by the "net"
    first_click: str = "grabcut"
    #: how the click network crops and upsamples
    net: ClickNetParams = field(default_factory=ClickNetParams)

    def __post_init__(self) -> None:
        if self.clicks not in ("net", "grabcut") or self.first_click not in ("net", "grabcut"):
            raise ValueError(
                "clicks and first_click must be 'net' or 'grabcut', "
                f"got {self.clicks!r}, {self.first_click!r}"
            )
        if self.previous_mode not in _PREVIOUS_MODES:
            raise ValueError(
                f"previous_mode must be one of {', '.join(_PREVIOUS_MODES)}, got {self.previous_mode!r}"
            )
        if self.grabcut_side < 8 or self.grabcut_iterations < 0 or self.guided_radius < 0:
            raise ValueError(
                "grabcut_side must be at least 8, grabcut_iterations and guided_radius at least 0"
            )


_PREVIOUS_MODES = ("prior", "probable", "ignore")
DEFAULT_PARAMS = PromptParams()


# ---------------------------------------------------------------------------------------------- weights


def saliency_card(card: str | Path | None = None) -> dict[str, Any]:
    """The card of the shipped saliency network (source, licences, SHA-256): ``weights/u2netp.json``."""
    path = Path(card) if card is not None else _WEIGHTS_DIR / f"{SALIENCY_MODEL}.json"
    return json.loads(path.read_text())


def _verified_saliency(path: Path, card: dict[str, Any], what: str = "saliency network") -> Path:
    if not path.is_file():
        raise FileNotFoundError(f"{path}: the {what} is missing from this installation; reinstall pcvos")
    expected = card.get("sha256")
    if not expected or sha256_of(path) != expected:
        raise CheckpointError(
            f"{path}: the {what} does not match its checksum (damaged install?); reinstall pcvos"
        )
    return path


def click_card(card: str | Path | None = None) -> dict[str, Any]:
    """The card of the shipped click network (training data, licences, SHA-256): ``weights/clicknet.json``."""
    path = Path(card) if card is not None else _WEIGHTS_DIR / f"{CLICK_MODEL}.json"
    return json.loads(path.read_text())


def load_click_model(
    path: str | Path | None = None, card: str | Path | None = None, threads: int | None = None
) -> ClickNetModel:
    """The click network, checked against its card's SHA-256 before loading (default: the shipped one)."""
    weights = Path(path) if path is not None else _WEIGHTS_DIR / f"{CLICK_MODEL}.pt"
    _verified_saliency(weights, click_card(card), "click network")
    return ClickNetModel(weights, threads=threads)


_CLICK: ClickNetModel | None = None


def click_model() -> ClickNetModel:
    """The shared click network (loaded and checked on first use; runs at ``CLICK_THREADS``)."""
    global _CLICK
    with _MODEL_LOCK:
        if _CLICK is None:
            _CLICK = load_click_model(threads=CLICK_THREADS)
        return _CLICK


class SaliencyModel:
    """U²-Net-p behind onnxruntime: ``model(image)`` is the (H, W) float32 saliency in [0, 1].

    ``threads`` caps onnxruntime's threads (default: torch's current setting, which ``--threads``
    and :func:`pcvos.runtime` set). The file is checked against the card's SHA-256 before loading.
    """

    def __init__(
        self, path: str | Path | None = None, card: str | Path | None = None, threads: int | None = None
    ):
        import onnxruntime as ort  # imported here: `import pcvos` should not pay for it

        weights = Path(path) if path is not None else _WEIGHTS_DIR / f"{SALIENCY_MODEL}.onnx"
        _verified_saliency(weights, saliency_card(card))
        if threads is None:
            import torch

            threads = torch.get_num_threads()
        options = ort.SessionOptions()
        options.intra_op_num_threads = max(1, int(threads))
        options.inter_op_num_threads = 1
        options.log_severity_level = 3  # onnxruntime's own warnings are not the user's business
        self._session = ort.InferenceSession(
            str(weights), sess_options=options, providers=["CPUExecutionProvider"]
        )
        self._input = self._session.get_inputs()[0].name
        self._lock = threading.Lock()

    def __call__(self, image: np.ndarray) -> np.ndarray:
        h, w = image.shape[:2]
        x = cv2.resize(image, (SALIENCY_SIDE, SALIENCY_SIDE), interpolation=cv2.INTER_AREA).astype(np.float32)
        x = (x / max(float(x.max()), 1.0) - _MEAN) / _STD
        x = np.ascontiguousarray(x.transpose(2, 0, 1)[None])
        with self._lock:
            out = self._session.run(None, {self._input: x})[0][0, 0]  # the fused side output, a sigmoid
        return cv2.resize(np.clip(out, 0.0, 1.0), (w, h), interpolation=cv2.INTER_LINEAR)


_MODEL: SaliencyModel | None = None
_MODEL_LOCK = threading.Lock()


def saliency_model() -> SaliencyModel:
    """The shared :class:`SaliencyModel` (loaded and checked on first use)."""
    global _MODEL
    with _MODEL_LOCK:
        if _MODEL is None:
            _MODEL = SaliencyModel()
        return _MODEL


class SaliencyCache:
    """The saliency of the last few (image, region) pairs, so that each new click skips the network.

    Keys are a digest of the image's bytes and the region; ``maxsize`` entries are kept, least
    recently used dropped first.
    """

    def __init__(self, maxsize: int = 8) -> None:
        if maxsize < 1:
            raise ValueError(f"maxsize must be at least 1, got {maxsize}")
        self.maxsize = maxsize
        self._items: OrderedDict[tuple, np.ndarray] = OrderedDict()
        self._pending: dict[tuple, threading.Event] = {}
        self._lock = threading.Lock()

    @staticmethod
    def digest(image: np.ndarray) -> str:
        return hashlib.blake2b(np.ascontiguousarray(image).data, digest_size=16).hexdigest()

    def get(self, image: np.ndarray, region: tuple[int, int, int, int], model: SaliencyModel | None = None):
        """Saliency of ``image[y0:y1, x0:x1]`` for ``region`` = (x0, y0, x1, y1).

        A request for a region another thread is computing waits for that answer instead of
        running the network a second time (a click arriving while the studio prepares its frame).
        """
        key = (self.digest(image), image.shape, region)
        while True:
            with self._lock:
                if key in self._items:
                    self._items.move_to_end(key)
                    return self._items[key]
                running = self._pending.get(key)
                if running is None:
                    done = self._pending[key] = threading.Event()
                    break
            running.wait()  # then read the cache again (the other thread may have failed)
        try:
            x0, y0, x1, y1 = region
            sal = (model or saliency_model())(image[y0:y1, x0:x1])
            sal.setflags(write=False)
            with self._lock:
                self._items[key] = sal
                while len(self._items) > self.maxsize:
                    self._items.popitem(last=False)
            return sal
        finally:
            with self._lock:
                del self._pending[key]
            done.set()

    def clear(self) -> None:
        with self._lock:
            self._items.clear()


DEFAULT_CACHE = SaliencyCache()


# ---------------------------------------------------------------------------------------------- checks


def _check_image(image: Any) -> np.ndarray:
    if not isinstance(image, np.ndarray):
        raise ValueError(  # noqa: TRY004 (the API promises ValueError for every bad input)
            f"image must be a numpy array (H, W, 3) of uint8, got {type(image).__name__}"
        )
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"image must have shape (H, W, 3) (RGB), got {image.shape}")
    if image.dtype != np.uint8:
        raise ValueError(f"image must be uint8 (0-255), got {image.dtype}")
    if image.shape[0] < 2 or image.shape[1] < 2:
        raise ValueError(f"image is too small ({image.shape[1]}x{image.shape[0]})")
    return image


def _check_box(box: Any, h: int, w: int) -> tuple[float, float, float, float]:
    try:
        b = np.asarray(box, dtype=np.float64)
    except (TypeError, ValueError):
        raise ValueError(f"box must be 4 numbers (x0, y0, x1, y1), got {box!r}") from None
    if b.shape != (4,):
        raise ValueError(f"box must be 4 numbers (x0, y0, x1, y1), got shape {b.shape}")
    if not np.isfinite(b).all():
        raise ValueError(f"box holds a non-finite value: {b.tolist()}")
    x0, y0, x1, y1 = b.tolist()
    if x1 <= x0 or y1 <= y0:
        raise ValueError(f"box ({x0:g}, {y0:g}, {x1:g}, {y1:g}) is empty: it needs x0 < x1 and y0 < y1")
    if x0 < 0 or y0 < 0 or x1 > w or y1 > h:
        raise ValueError(f"box ({x0:g}, {y0:g}, {x1:g}, {y1:g}) is outside the {w}x{h} image")
    if x1 - x0 < 2 or y1 - y0 < 2:
        raise ValueError(f"box ({x0:g}, {y0:g}, {x1:g}, {y1:g}) is less than 2 pixels wide or high")
    return x0, y0, x1, y1


def _check_points(points: Any, labels: Any, h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    if points is None:
        if labels is not None:
            raise ValueError("point_labels given without points")
        return np.zeros((0, 2)), np.zeros(0, dtype=bool)
    try:
        p = np.asarray(points, dtype=np.float64)
    except (TypeError, ValueError):
        raise ValueError(f"points must be an (N, 2) array of (x, y), got {points!r}") from None
    if p.ndim == 1 and p.shape == (2,):
        p = p[None]
    if p.ndim != 2 or p.shape[1] != 2:
        raise ValueError(f"points must be an (N, 2) array of (x, y), got shape {p.shape}")
    if not np.isfinite(p).all():
        raise ValueError("points hold a non-finite value")
    if labels is None:
        lab = np.ones(len(p), dtype=bool)  # SAM's default: clicks without labels are on the object
    else:
        raw = np.asarray(labels)
        if raw.ndim != 1 or len(raw) != len(p):
            raise ValueError(f"point_labels must hold one label per point ({len(p)}), got shape {raw.shape}")
        if raw.dtype == bool:
            lab = raw
        else:
            if not np.isin(raw, (0, 1)).all():
                raise ValueError(
                    f"point_labels must be 1 (object) or 0 (background), got {np.unique(raw).tolist()}"
                )
            lab = raw.astype(int) == 1
    outside = (p[:, 0] < 0) | (p[:, 1] < 0) | (p[:, 0] >= w) | (p[:, 1] >= h)
    if outside.any():
        x, y = p[np.flatnonzero(outside)[0]]
        raise ValueError(f"point ({x:g}, {y:g}) is outside the {w}x{h} image")
    return p, lab


def _check_previous(previous: Any, h: int, w: int) -> np.ndarray | None:
    if previous is None:
        return None
    m = np.asarray(previous)
    if m.shape != (h, w):
        raise ValueError(f"previous mask has shape {m.shape}, the image is ({h}, {w})")
    if m.dtype != bool:
        if not np.issubdtype(m.dtype, np.number) or not np.isfinite(m).all():
            raise ValueError("previous mask must be boolean or numeric (non-zero = object), without NaN")
        m = m != 0
    return m


# ---------------------------------------------------------------------------------------------- the mask


def _region(
    box: tuple[float, float, float, float] | None, h: int, w: int, margin: float
) -> tuple[int, int, int, int]:
    if box is None:
        return 0, 0, w, h
    x0, y0, x1, y1 = box
    mx, my = margin * (x1 - x0), margin * (y1 - y0)
    return (
        max(0, int(np.floor(x0 - mx))),
        max(0, int(np.floor(y0 - my))),
        min(w, int(np.ceil(x1 + mx))),
        min(h, int(np.ceil(y1 + my))),
    )


def prepare_prompts(
    image: np.ndarray, *, params: PromptParams = DEFAULT_PARAMS, cache: SaliencyCache | None = None
) -> None:
    """Run the saliency network on the whole of ``image`` now and keep the answer in ``cache``.

    A later :func:`mask_from_prompts` on this image with a first click and no box, or with no
    prompt at all, then skips the network (most of its time on a 480p frame): call this when a
    frame is shown, while the user aims. ``ValueError`` for a bad image.
    """
    image = _check_image(image)
    h, w = image.shape[:2]
    (cache or DEFAULT_CACHE).get(image, _region(None, h, w, params.box_margin))


def mask_from_prompts(
    image: np.ndarray,
    *,
    box: Sequence[float] | None = None,
    points: Any = None,
    point_labels: Any = None,
    previous: Any = None,
    params: PromptParams = DEFAULT_PARAMS,
    cache: SaliencyCache | None = None,
) -> np.ndarray:
    """A bool (H, W) mask of the object that the prompts point at.

    ``image`` is (H, W, 3) uint8 RGB; ``box`` is (x0, y0, x1, y1) in pixels (x1, y1 exclusive);
    ``points`` (N, 2) are (x, y) clicks with ``point_labels`` 1 = object, 0 = background (SAM's
    convention; without labels every click is on the object); ``previous`` is a mask (bool or
    non-zero = object) to refine with the clicks. No prompt at all gives the most salient object
    (possibly empty). Saliency is cached per image (``cache``, default a shared small cache), so
    repeated calls on one image with more clicks are fast. Bad prompts raise ``ValueError``.

    Clicks with a previous mask (and, with ``params.first_click="net"``, first clicks too) are
    answered by the click network (``params.clicks="net"``, the default); ``params.clicks="grabcut"``
    keeps the saliency + GrabCut path for them.
    """
    if params.clicks == "net" and points is not None:
        image = _check_image(image)
        h, w = image.shape[:2]
        b = _check_box(box, h, w) if box is not None else None
        pts, pos = _check_points(points, point_labels, h, w)
        prev = _check_previous(previous, h, w)
        if len(pts) and ((prev is not None and prev.any()) or params.first_click == "net"):
            out = click_model().predict(image, pts, pos, previous=prev, box=b, params=params.net)
            for (x, y), positive in zip(pts, pos, strict=True):  # a click always gets its own label
                out[int(y), int(x)] = bool(positive)
            return out
    run = functools.partial(
        _mask, image, box=box, points=points, point_labels=point_labels, previous=previous, cache=cache
    )
    out = run(params=params)
    if previous is not None and params.previous_mode == "prior" and params.collapse_iou > 0:
        prev = np.asarray(previous) != 0
        union = int((out | prev).sum())
        if union and (out & prev).sum() / union < params.collapse_iou:
            out = run(params=replace(params, previous_mode="probable"))
    return out


def _mask(
    image: np.ndarray,
    *,
    box: Sequence[float] | None = None,
    points: Any = None,
    point_labels: Any = None,
    previous: Any = None,
    params: PromptParams = DEFAULT_PARAMS,
    cache: SaliencyCache | None = None,
) -> np.ndarray:
    """mask_from_prompts for one setting of ``params`` (no collapse check)."""
    image = _check_image(image)
    h, w = image.shape[:2]
    b = _check_box(box, h, w) if box is not None else None
    pts, pos = _check_points(points, point_labels, h, w)
    prev = _check_previous(previous, h, w)
    cache = cache or DEFAULT_CACHE
    if b is None and len(pts) == 0 and prev is None and not params.auto_grabcut:
        sal = cache.get(image, (0, 0, w, h))
        auto = sal >= params.auto_threshold
        return _components_with(auto, []) if auto.any() else auto

    if b is None and prev is not None and prev.any() and params.previous_mode == "prior":
        # refine around the previous object and the clicks, not the whole frame
        ys, xs = np.nonzero(prev)
        xs, ys = np.concatenate([xs, pts[:, 0]]), np.concatenate([ys, pts[:, 1]])
        x0, y0, x1, y1 = _region((xs.min(), ys.min(), xs.max() + 1, ys.max() + 1), h, w, params.box_margin)
    else:
        x0, y0, x1, y1 = _region(b, h, w, params.box_margin)
    crop = image[y0:y1, x0:x1]
    ch, cw = crop.shape[:2]
    if prev is not None and params.previous_mode == "prior":
        prior = prev[y0:y1, x0:x1].astype(np.float32)
    else:
        prior = cache.get(image, (x0, y0, x1, y1))

    scale = min(1.0, params.grabcut_side / max(ch, cw))
    sh, sw = max(2, round(ch * scale)), max(2, round(cw * scale))
    small = cv2.resize(crop, (sw, sh), interpolation=cv2.INTER_AREA) if scale < 1 else crop
    prior_s = cv2.resize(prior, (sw, sh), interpolation=cv2.INTER_LINEAR) if scale < 1 else prior
    gc = np.where(prior_s >= params.fg_threshold, cv2.GC_PR_FGD, cv2.GC_PR_BGD).astype(np.uint8)
    if prev is None or params.previous_mode != "prior":
        if prev is not None and params.previous_mode == "probable":
            ps: np.ndarray = prev[y0:y1, x0:x1].astype(np.float32)
            ps = cv2.resize(ps, (sw, sh), interpolation=cv2.INTER_LINEAR) if scale < 1 else ps
            gc = np.where(ps >= 0.5, cv2.GC_PR_FGD, cv2.GC_PR_BGD).astype(np.uint8)
        # the network's confident answers stay; GrabCut decides the uncertain rest
        gc[prior_s >= params.sure_fg] = cv2.GC_FGD
        gc[prior_s < params.sure_bg] = cv2.GC_BGD
    if b is not None:  # outside the box is certain background
        bx0, by0 = (b[0] - x0) * sw / cw, (b[1] - y0) * sh / ch
        bx1, by1 = (b[2] - x0) * sw / cw, (b[3] - y0) * sh / ch
        inside = np.zeros((sh, sw), dtype=bool)
        inside[int(np.floor(by0)) : int(np.ceil(by1)), int(np.floor(bx0)) : int(np.ceil(bx1))] = True
        gc[~inside] = cv2.GC_BGD
    radius = max(1, round(params.click_radius * min(sh, sw)))
    seeds: list[tuple[int, int]] = []
    small_pts = []
    for (x, y), positive in zip(pts, pos, strict=True):
        sx = int(np.clip((x - x0) * sw / cw, 0, sw - 1))
        sy = int(np.clip((y - y0) * sh / ch, 0, sh - 1))
        small_pts.append((sx, sy, positive))
    # background clicks first, so that an object click on the same spot wins
    for sx, sy, positive in sorted(small_pts, key=lambda t: t[2]):
        if 0 <= sx < sw and 0 <= sy < sh:
            cv2.circle(gc, (sx, sy), radius, int(cv2.GC_FGD if positive else cv2.GC_BGD), thickness=-1)
            if positive:
                seeds.append((sy, sx))
    fg_labels = (gc == cv2.GC_FGD) | (gc == cv2.GC_PR_FGD)
    bg_labels = ~fg_labels
    if fg_labels.any() and bg_labels.any() and params.grabcut_iterations > 0:
        bgd, fgd = np.zeros((1, 65), np.float64), np.zeros((1, 65), np.float64)
        cv2.setRNGSeed(0)  # GrabCut's k-means start: the same prompts give the same mask
        # OpenCV's stubs demand a rect, which GC_INIT_WITH_MASK ignores (its docs pass None)
        cv2.grabCut(  # type: ignore[call-overload]
            np.ascontiguousarray(small[..., ::-1]),
            gc,
            None,
            bgd,
            fgd,
            params.grabcut_iterations,
            cv2.GC_INIT_WITH_MASK,
        )
        fg = (gc == cv2.GC_FGD) | (gc == cv2.GC_PR_FGD)
    else:
        fg = fg_labels
    if fg.any():
        fg = _components_with(fg, seeds)
    if scale < 1:
        soft = cv2.resize(fg.astype(np.float32), (cw, ch), interpolation=cv2.INTER_LINEAR)
        if params.guided_radius > 0:
            soft = _guided_filter(crop, soft, params.guided_radius, params.guided_eps)
        up = soft >= 0.5
    else:
        up = fg
    out = np.zeros((h, w), dtype=bool)
    out[y0:y1, x0:x1] = up
    if b is not None:
        bi = np.zeros((h, w), dtype=bool)
        bi[int(np.floor(b[1])) : int(np.ceil(b[3])), int(np.floor(b[0])) : int(np.ceil(b[2]))] = True
        out &= bi
    for (x, y), positive in zip(pts, pos, strict=True):  # a click always gets its own label
        out[int(y), int(x)] = bool(positive)
    return out
