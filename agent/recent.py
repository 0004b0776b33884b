"""The last verdicts with their pictures (contract section 9, ``GET /recent``).

Each entry is the ``verdict`` event's body, the ROI image as received downscaled to a long
side of at most ``THUMB_SIDE`` px (PNG), and its heatmap PNG when the infer made one. The
ring is bounded twice: ``max_items`` entries and ``max_bytes`` of pictures; the oldest go
first. An evicted ``seq`` is simply not found.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import cv2
import numpy as np

THUMB_SIDE = 512


@dataclass(frozen=True)
class RecentVerdict:
    seq: int
    verdict: Mapping[str, Any]
    image_png: bytes = field(repr=False)
    heatmap_png: bytes | None = field(default=None, repr=False)

    @property
    def size(self) -> int:
        return len(self.image_png) + len(self.heatmap_png or b"") + 1024


class RecentVerdicts:
    def __init__(self, max_items: int = 50, max_bytes: int = 32 * 1024 * 1024) -> None:
        self.max_items = max_items
        self.max_bytes = max_bytes
        self._ring: OrderedDict[int, RecentVerdict] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    @property
    def bytes(self) -> int:
        return self._bytes

    def add(self, entry: RecentVerdict) -> None:
        if self.max_items == 0 or entry.size > self.max_bytes:
            return
        with self._lock:
            self._ring[entry.seq] = entry
            self._bytes += entry.size
            while self._ring and (len(self._ring) > self.max_items or self._bytes > self.max_bytes):
                _, old = self._ring.popitem(last=False)
                self._bytes -= old.size

    def newest_first(self) -> list[RecentVerdict]:
        with self._lock:
            return list(reversed(self._ring.values()))

    def get(self, seq: int) -> RecentVerdict | None:
        with self._lock:
            return self._ring.get(seq)


def thumbnail_png(image: np.ndarray, side: int = THUMB_SIDE) -> bytes:
    """``image`` (H x W x 3 RGB uint8, as the engine decodes it) as a PNG whose long side
    is at most ``side`` px."""
    height, width = image.shape[:2]
    scale = side / max(height, width)
    if scale < 1:
        size = (max(1, round(width * scale)), max(1, round(height * scale)))
        image = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
    ok, buffer = cv2.imencode(".png", cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    if not ok:
        raise ValueError("the thumbnail could not be encoded")
    return buffer.tobytes()
