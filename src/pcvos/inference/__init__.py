"""inference: the per-clip engine and its public forms (segment, Segmenter, Session)."""

from pcvos.inference.api import Segmenter, segment
from pcvos.inference.session import Session

__all__ = ["Segmenter", "Session", "segment"]
