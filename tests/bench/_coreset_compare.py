"""Our greedy k-center against anomalib's ``KCenterGreedy``, on the very same embeddings.

Every selection runs in its own subprocess (time, RSS growth); the coverage radius of each
selected set is then measured here in the original embedding space, so that both methods
are judged by the k-center objective itself rather than by their own projections.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tests.bench._compare import ratio
from tests.bench._engine_worker import WorkerFailed, run_worker
from tests.bench._metrics import coverage
from tests.bench._report import emit, emit_target, log

DEFAULT_PROJECTION_DIM = 128
# Side by side with the default, for choosing it: 64 is cheaper; 256 keeps more of the
# distances, and the radius is measured in the full space.
ALT_PROJECTION_DIMS = (64, 256)
TARGET_SPEEDUP = 8.0
TARGET_RSS_GROWTH_MIB = 300.0
TARGET_RADIUS_RATIO = 1.05
ATTEMPTS = 2  # a baseline run killed for its memory is tried once more before giving up
PLAIN_BASELINE = "plain greedy k-center (full-dimensional distances, torch)"


class BaselineUnavailable(RuntimeError):
    pass


@dataclass(frozen=True)
class Embeddings:
    path: Path
    rows: int
    dim: int
    patches_per_image: int

    def load(self) -> np.ndarray:
        flat = np.fromfile(self.path, dtype=np.float32, count=self.rows * self.dim)
        return flat.reshape(self.rows, self.dim)


@dataclass(frozen=True)
class Selection:
    method: str
    rate: float
    projection_dim: int | None
    input_dtype: str
    ms: float
    rss_growth_mib: float
    peak_rss_mib: float
    centres: int
    unique: int
    radius: float
    mean_distance: float


def compare_coresets(source: Embeddings, workdir: Path, rates: tuple[float, ...]) -> None:
    points = source.load()  # this process's copy, for the radii only
    baseline = "anomalib"
    for rate in rates:
        ours = _select(source, points, workdir, "ours", rate, DEFAULT_PROJECTION_DIM)
        try:
            base = _select(source, points, workdir, baseline, rate)
        except BaselineUnavailable as exc:
            emit("engine.coreset.anomalib_unavailable", error=str(exc), fallback=PLAIN_BASELINE)
            baseline = "plain"
            base = _select(source, points, workdir, baseline, rate)
        _compare(ours, base, baseline, rate, source)
        alts = [_select(source, points, workdir, "ours", rate, d) for d in ALT_PROJECTION_DIMS]
        choices = [s for s in (*alts, ours) if s is not None]
        _projection_choice(sorted(choices, key=lambda s: s.projection_dim or 0), base)
    # PatchCore.fit hands the selection float16 rows; their conversion is part of its memory.
    rate = min(rates)
    f16 = _select(source, points, workdir, "ours", rate, DEFAULT_PROJECTION_DIM, "float16")
    emit_target(
        "engine.coreset.rss_growth_mib.float16_input",
        f16.rss_growth_mib if f16 else None,
        "<",
        TARGET_RSS_GROWTH_MIB,
        "MiB",
        rate=rate,
        patches=source.rows,
        note="the fit's own input dtype; the comparison above feeds both methods float32",
    )


def _select(
    source: Embeddings,
    points: np.ndarray,
    workdir: Path,
    method: str,
    rate: float,
    projection_dim: int | None = None,
    dtype: str = "float32",
) -> Selection | None:
    """One selection in a subprocess, its radius measured here. None when every attempt
    failed (each failure is a JSON line); ``BaselineUnavailable`` when anomalib is missing."""
    idx_path = workdir / f"coreset-{method}-{rate}-{projection_dim}-{dtype}.npy"
    args: dict[str, Any] = {
        "method": method,
        "rate": rate,
        "projection_dim": projection_dim,
        "dtype": dtype,
        "emb_path": str(source.path),
        "rows": source.rows,
        "dim": source.dim,
        "idx_out": str(idx_path),
        "seed": 0,
    }
    log(f"coreset: {method} rate={rate} projection_dim={projection_dim} input={dtype}")
    result = _run_selection(args)
    if result is None:
        return None
    if "unavailable" in result:
        raise BaselineUnavailable(result["unavailable"])
    chosen = np.load(idx_path)
    radius, mean_distance = coverage(points, points[chosen])
    selection = Selection(
        method=method,
        rate=rate,
        projection_dim=projection_dim,
        input_dtype=dtype,
        ms=result["ms"],
        rss_growth_mib=result["rss_growth_mib"],
        peak_rss_mib=result["peak_rss_mib"],
        centres=result["centres"],
        unique=result["unique"],
        radius=radius,
        mean_distance=mean_distance,
    )
    emit(
        "engine.coreset.run",
        **vars(selection),
        patches=source.rows,
        dim=source.dim,
        peak_is_selection_only=result["peak_is_selection_only"],
    )
    return selection


def _run_selection(args: dict[str, Any]) -> dict[str, Any] | None:
    for attempt in range(1, ATTEMPTS + 1):
        try:
            return run_worker("coreset", args)
        except WorkerFailed as exc:
            emit(
                "engine.coreset.run_failed",
                method=args["method"],
                rate=args["rate"],
                projection_dim=args["projection_dim"],
                attempt=attempt,
                over_rss_cap=exc.over_cap,
                error=str(exc),
            )
    return None


def _compare(
    ours: Selection | None,
    base: Selection | None,
    baseline: str,
    rate: float,
    source: Embeddings,
) -> None:
    """Speed-up, RSS growth and radius ratio; a side that failed makes its lines fail."""
    context: dict[str, Any] = {"rate": rate, "patches": source.rows, "baseline": baseline}
    emit_target(
        "engine.coreset.speedup",
        ratio(base.ms if base else None, ours.ms if ours else None),
        ">=",
        TARGET_SPEEDUP,
        "x",
        ours_ms=ours.ms if ours else None,
        baseline_ms=base.ms if base else None,
        **context,
    )
    emit_target(
        "engine.coreset.rss_growth_mib",
        ours.rss_growth_mib if ours else None,
        "<",
        TARGET_RSS_GROWTH_MIB,
        "MiB",
        baseline_rss_growth_mib=base.rss_growth_mib if base else None,
        **context,
    )
    emit_target(
        "engine.coreset.radius_ratio",
        ratio(ours.radius if ours else None, base.radius if base else None),
        "<=",
        TARGET_RADIUS_RATIO,
        "ratio",
        ours_radius=ours.radius if ours else None,
        baseline_radius=base.radius if base else None,
        mean_distance_ratio=ratio(
            ours.mean_distance if ours else None, base.mean_distance if base else None
        ),
        **context,
    )


def _projection_choice(selections: list[Selection], base: Selection | None) -> None:
    """Each projection width side by side, for choosing the default."""
    for sel in selections:
        emit(
            "engine.coreset.projection_dim",
            projection_dim=sel.projection_dim,
            rate=sel.rate,
            ms=sel.ms,
            radius=sel.radius,
            mean_distance=sel.mean_distance,
            radius_vs_baseline=ratio(sel.radius, base.radius if base else None),
            rss_growth_mib=sel.rss_growth_mib,
            baseline=base.method if base else None,
        )
