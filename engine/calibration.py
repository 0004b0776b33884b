"""Threshold selection from OK (and optionally NG) image scores."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from engine.errors import BadInput


@dataclass(frozen=True)
class ThresholdChoice:
    threshold: float
    ok_mean: float
    ng_mean: float | None
    p99_ok: float
    p5_ng: float | None
    score_percentile: float
    n_ok: int
    n_ng: int


def choose_threshold(
    ok_scores: Sequence[float],
    ng_scores: Sequence[float] | None = None,
    score_percentile: float = 99.0,
) -> ThresholdChoice:
    """The contract's rule.

    With NG scores: the midpoint of ``p99_ok`` and ``p5_ng`` when they separate, else
    ``p99_ok``. Without: the ``score_percentile`` of the OK scores. ``p99_ok`` is the OK
    scores' ``score_percentile`` (99 unless configured), as in the seed backend.
    """
    ok = _finite(ok_scores, "ok_scores")
    if ok.size == 0:
        raise BadInput("calibration needs at least one finite OK score")
    if not 0 < score_percentile <= 100:
        raise BadInput(f"score_percentile must be in (0, 100], got {score_percentile}")
    ng = _finite(ng_scores or [], "ng_scores")
    with np.errstate(over="ignore"):  # overflow is refused just below, not warned about
        return _choose(ok, ng, score_percentile)


def _choose(ok: np.ndarray, ng: np.ndarray, score_percentile: float) -> ThresholdChoice:
    p_ok = float(np.percentile(ok, score_percentile))
    p_ng = float(np.percentile(ng, 5)) if ng.size else None
    threshold = p_ok if p_ng is None or p_ng <= p_ok else (p_ok + p_ng) / 2.0
    if not np.isfinite([threshold, ok.mean(), ng.mean() if ng.size else 0.0]).all():
        raise BadInput("scores too large to calibrate with (the threshold overflows)")
    return ThresholdChoice(
        threshold=threshold,
        ok_mean=float(ok.mean()),
        ng_mean=float(ng.mean()) if ng.size else None,
        p99_ok=p_ok,
        p5_ng=p_ng,
        score_percentile=float(score_percentile),
        n_ok=int(ok.size),
        n_ng=int(ng.size),
    )


def _finite(values: Sequence[float], name: str) -> np.ndarray:
    try:
        array = np.asarray(list(values), dtype=np.float64).reshape(-1)
    except (TypeError, ValueError):
        raise BadInput(f"{name} must be a list of numbers") from None
    return array[np.isfinite(array)]
