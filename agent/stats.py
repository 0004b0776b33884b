"""Counters and recent latencies for ``GET /stats`` and the MQTT stats topic."""

from __future__ import annotations

import threading
from collections import Counter, deque
from typing import Any

import numpy as np


class Stats:
    def __init__(self, window: int = 1000) -> None:
        self._lock = threading.Lock()
        self._infer_ms: deque[float] = deque(maxlen=window)
        self._fit_ms: deque[float] = deque(maxlen=window)
        self.outcomes: Counter[str] = Counter()
        self.by_source: Counter[str] = Counter()

    def record(self, command: str, source: str, outcome: str, elapsed_ms: float) -> None:
        with self._lock:
            self.outcomes[f"{command}:{outcome}"] += 1
            self.by_source[source] += 1
            if outcome == "ok" and command in ("infer", "infer_batch"):
                self._infer_ms.append(elapsed_ms)
            elif outcome == "ok" and command == "fit_ok":
                self._fit_ms.append(elapsed_ms)

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            infer = np.array(self._infer_ms) if self._infer_ms else None
            return {
                "infer_p50_ms": round(float(np.percentile(infer, 50)), 2)
                if infer is not None
                else None,
                "infer_p95_ms": round(float(np.percentile(infer, 95)), 2)
                if infer is not None
                else None,
                "infer_count": len(self._infer_ms),
                "counts": dict(self.outcomes),
                "by_source": dict(self.by_source),
            }


def _percentiles(values: deque[float], points: tuple[int, ...]) -> list[float | None]:
    if not values:
        return [None] * len(points)
    return [round(float(v), 2) for v in np.percentile(np.array(values), points)]
