"""Shared fixtures: the parity data (copied from the reference into tests/data) and small models."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch

DATA = Path(__file__).resolve().parent / "data"
PARITY = DATA / "parity"
SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def _make_weights_module():
    spec = importlib.util.spec_from_file_location("parity_make_weights", PARITY / "make_weights.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="session")
def official_weights():
    """Stand-in weights in the released layouts: a function ``(stcn: bool, seed: int) -> state_dict``."""
    mod = _make_weights_module()
    cache: dict = {}

    def make(stcn: bool = False, seed: int = mod.SEED) -> dict:
        key = (stcn, seed)
        if key not in cache:
            cache[key] = mod.official_state_dict(seed=seed, stcn=stcn)
        return {k: v.clone() for k, v in cache[key].items()}

    return make


@pytest.fixture(scope="session")
def parity_fixture():
    return dict(np.load(PARITY / "fixture.npz"))


@pytest.fixture(scope="session")
def pcvos_model(official_weights):
    import pcvos

    torch.manual_seed(0)
    return pcvos.load_model(official_weights())


@pytest.fixture(scope="session")
def stcn_model(official_weights):
    import pcvos

    return pcvos.load_model(official_weights(stcn=True))


@pytest.fixture(scope="session")
def davis_root() -> Path:
    root = SHARED_DATA / "davis2016-train"
    if not root.is_dir():
        pytest.skip("../shared/data/davis2016-train not present")
    return root


@pytest.fixture(scope="session")
def broken_mp4():
    """A function ``(path, frames, fps, keep) -> path``: an H.264 mp4 of ``frames`` with its index at the
    front (faststart), cut to the first ``keep`` of its bytes, so decoding breaks part-way."""
    import av

    def make(path: Path, frames: np.ndarray, fps: int, keep: float) -> Path:
        with av.open(str(path), "w", options={"movflags": "faststart"}) as c:
            s = c.add_stream("libx264" if "libx264" in av.codecs_available else "mpeg4", rate=fps)
            s.height, s.width = frames.shape[1:3]
            s.pix_fmt = "yuv420p"
            for f in frames:
                for p in s.encode(av.VideoFrame.from_ndarray(f, format="rgb24")):
                    c.mux(p)
            for p in s.encode():
                c.mux(p)
        data = path.read_bytes()
        path.write_bytes(data[: int(len(data) * keep)])
        return path

    return make


@pytest.fixture(scope="session")
def random_loss_inputs():
    """``make(b, f, k, h, w)`` -> (out, batch): random network outputs and labels in the layout
    :func:`pcvos.train.losses.compute_losses` reads (f predicted frames, k object slots, clips of 2)."""

    def make(b: int, f: int, k: int, h: int, w: int) -> tuple[dict, dict]:
        logits = torch.randn(b, f, k + 1, h, w)
        labels = torch.randint(0, k + 1, (b, f + 1, h, w))
        masks = torch.stack([(labels == i + 1).float() for i in range(k)], 2)
        batch = {"labels": labels, "masks": masks, "valid": torch.ones(b, k, dtype=torch.bool)}
        out = {"logits": logits, "probs": logits.softmax(2), "clips": [[0, 1], [2, 3]]}
        return out, batch

    return make
