"""The PatchCore memory bank of one ROI and its metadata."""

from __future__ import annotations

import uuid
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

import numpy as np

from engine.errors import ScaleMismatch
from engine.index import NearestNeighbourIndex

SCALE_TOLERANCE = 0.01  # scales differing by more than 1 % never mix (contract section 2)


def new_model_version() -> str:
    """Sortable, unique per fit: ``20261122T101530123Z-3f2a9c1b``."""
    now = datetime.now(UTC)
    return f"{now:%Y%m%dT%H%M%S}{now.microsecond // 1000:03d}Z-{uuid.uuid4().hex[:8]}"


def utc_now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def check_scale(expected: float | None, got: float, what: str = "memory") -> None:
    """Raise ``ScaleMismatch`` when ``got`` differs from ``expected`` by more than 1 %."""
    if expected is None or expected <= 0:
        return
    if abs(got - expected) > SCALE_TOLERANCE * expected:
        raise ScaleMismatch(
            f"mm_per_px {got} differs from the {what}'s {expected} by more than 1 %; "
            "scales never mix in one memory"
        )


@dataclass(frozen=True)
class MemoryInfo:
    model_version: str
    created_at: str
    mm_per_px: float | None
    n_embeddings: int
    coreset_size: int
    coreset_rate_requested: float
    coreset_rate_applied: float
    metric: str = "cosine"
    feature_id: str = ""  # weights hash + input size + layers; "" for legacy memories
    # The backbone runtime and precision whose features built it ("torch-fp32",
    # "onnxruntime-int8"); "" for memories older than the runtime choice (torch).
    runtime: str = ""
    ok_scale: float = 0.0  # heatmap norm when uncalibrated: typical OK image score
    n_samples: int = 0
    shape: dict[str, Any] | None = None
    sample_sha256: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any], bank_rows: int) -> MemoryInfo:
        """Tolerant of the legacy backends' partial metadata."""
        known = {name for name in cls.__dataclass_fields__}
        values = {k: v for k, v in data.items() if k in known}
        values.setdefault("model_version", str(data.get("version", "legacy")))
        values.setdefault("created_at", str(data.get("timestamp", "")))
        values.setdefault("mm_per_px", data.get("mm_per_px"))
        values.setdefault("n_embeddings", int(data.get("n_embeddings", bank_rows)))
        values.setdefault("coreset_size", bank_rows)
        values.setdefault("coreset_rate_requested", float(data.get("coreset_rate", 0.0)))
        values.setdefault("coreset_rate_applied", float(data.get("coreset_rate", 0.0)))
        return cls(**values)


@dataclass
class Memory:
    """bank: (M, D) float16 coreset rows; sources: (M,) int32 index of the fit sample
    each row came from (for leave-one-out scoring); token_shape: (rows, cols)."""

    bank: np.ndarray
    sources: np.ndarray
    token_shape: tuple[int, int]
    info: MemoryInfo
    _index: NearestNeighbourIndex | None = field(default=None, repr=False, compare=False)

    @property
    def index(self) -> NearestNeighbourIndex:
        if self._index is None:
            self._index = NearestNeighbourIndex.build(self.bank, self.info.metric)
        return self._index

    def with_info(self, **changes: Any) -> Memory:
        return Memory(self.bank, self.sources, self.token_shape, replace(self.info, **changes))
