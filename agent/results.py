"""One frozen dataclass per command result (contract section 2), built by the handlers.

``fields()`` is the contract's JSON body without pictures; a heatmap stays PNG bytes
(``InferResult.heatmap_png``) until an adapter encodes it in its own wire format, once:
MQTT base64 downscaled to ``heatmap_max_bytes``, HTTP base64, folders the file's bytes.
``body()`` is the plain JSON form (base64 heatmap) that HTTP and logs use.

No result field shares a name with the MQTT envelope's (``ok``, ``command``, ``seq``...):
the envelope and the body are merged without renaming anything (a test keeps it so).
"""

from __future__ import annotations

import base64
import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

from agent.errors import AgentError

HEATMAP_FIELD = "heatmap_png_base64"


@dataclass(frozen=True, kw_only=True)
class Result:
    # Fields that stay out of ``fields()`` (pictures, in-process extras).
    not_wire: ClassVar[frozenset[str]] = frozenset()

    def fields(self) -> dict[str, Any]:
        return {
            f.name: _plain(getattr(self, f.name))
            for f in dataclasses.fields(self)
            if f.name not in self.not_wire
        }

    def body(self) -> dict[str, Any]:
        return self.fields()

    @classmethod
    def from_fields(cls, values: Mapping[str, Any]) -> Result:
        """A result read back from its ``fields()`` (the journal's replay of a mutating
        command). Unknown names are ignored: an older agent may have stored more."""
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in names})


def _plain(value: Any) -> Any:
    if isinstance(value, Result):
        return value.fields()
    if isinstance(value, tuple | list):
        return [_plain(v) for v in value]
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    return value


@dataclass(frozen=True, kw_only=True)
class JsonResult(Result):
    """A result that is a JSON object by nature: ``health`` (also read by adapters before
    a command exists) and ``manifest`` (the stored ROI, as the engine describes it)."""

    values: Mapping[str, Any]

    def fields(self) -> dict[str, Any]:
        return dict(self.values)

    @classmethod
    def from_fields(cls, values: Mapping[str, Any]) -> Result:
        return cls(values=dict(values))


@dataclass(frozen=True, kw_only=True)
class FitResult(Result):
    ok_added: int
    samples: tuple[Mapping[str, Any], ...] = ()
    memory_fit: bool = True
    n_embeddings: int | None = None
    coreset_size: int | None = None
    token_shape: tuple[int, int] | None = None
    coreset_rate_requested: float | None = None
    coreset_rate_applied: float | None = None
    n_samples: int | None = None
    model_version: str | None = None
    elapsed_ms: float = 0.0

    def fields(self) -> dict[str, Any]:
        out = super().fields()
        if not self.memory_fit:  # only stored: no memory fields at all
            out = {k: out[k] for k in ("ok_added", "samples", "memory_fit", "elapsed_ms")}
        return out


@dataclass(frozen=True, kw_only=True)
class AddNgResult(Result):
    ng_added: int
    samples: tuple[Mapping[str, Any], ...] = ()


@dataclass(frozen=True, kw_only=True)
class CalibrationResult(Result):
    threshold: float
    ok_mean: float | None
    ng_mean: float | None
    p99_ok: float | None
    p5_ng: float | None
    n_ok: int
    n_ng: int
    mm_per_px: float | None
    area_mm2_thr: float
    score_percentile: float
    model_version: str | None
    method: str


@dataclass(frozen=True, kw_only=True)
class InferResult(Result):
    not_wire: ClassVar[frozenset[str]] = frozenset({"heatmap_png"})
    role_id: str
    roi_id: str
    score: float
    threshold: float | None
    is_anomaly: bool | None
    token_shape: tuple[int, int]
    regions: tuple[Mapping[str, Any], ...]
    model_version: str
    runtime: str
    inference_ms: float
    heatmap_png: bytes | None = field(default=None, repr=False)

    def body(self) -> dict[str, Any]:
        out = self.fields()
        if self.heatmap_png is not None:
            out[HEATMAP_FIELD] = base64.b64encode(self.heatmap_png).decode("ascii")
        return out

    @property
    def max_area_mm2(self) -> float | None:
        return max((float(r.get("area_mm2", 0.0)) for r in self.regions), default=None)


@dataclass(frozen=True, kw_only=True)
class BatchItem:
    """One ``infer_batch`` item: its verdict, or its own error (the others still run)."""

    request_id: str
    result: InferResult | None = None
    error: AgentError | None = None

    def fields(self, heatmap: bool = True) -> dict[str, Any]:
        if self.error is not None or self.result is None:
            error = self.error.body() if self.error else {}
            return {"ok": False, "request_id": self.request_id, "error": error}
        verdict = self.result.body() if heatmap else self.result.fields()
        return {"ok": True, "request_id": self.request_id, **verdict}


@dataclass(frozen=True, kw_only=True)
class InferBatchResult(Result):
    items: tuple[BatchItem, ...]

    def fields(self) -> dict[str, Any]:
        return {"results": [item.fields(heatmap=False) for item in self.items]}

    def body(self) -> dict[str, Any]:
        return {"results": [item.fields() for item in self.items]}


@dataclass(frozen=True, kw_only=True)
class DatasetListResult(Result):
    # Per label ("ok", "ng"): {count, files[]}. Nested: "ok" is also the envelope's flag.
    datasets: Mapping[str, Mapping[str, Any]]


@dataclass(frozen=True, kw_only=True)
class DatasetDeleteResult(Result):
    deleted: int
    label: str
    file: str


@dataclass(frozen=True, kw_only=True)
class DatasetClearResult(Result):
    deleted: int
    label: str


def verdicts_of(result: Result | None) -> list[InferResult]:
    """The verdicts a result holds: an infer's, or each successful infer_batch item's."""
    if isinstance(result, InferResult):
        return [result]
    if isinstance(result, InferBatchResult):
        return [item.result for item in result.items if item.result is not None]
    return []
