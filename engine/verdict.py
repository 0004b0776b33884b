"""A prediction turned into the contract's answer: threshold, decision, regions, heatmap."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from engine.memory import Memory
from engine.patchcore import Prediction
from engine.scoring import Region, encode_png, find_regions, heatmap_u8


@dataclass(frozen=True)
class Verdict:
    score: float
    threshold: float | None  # None: the ROI is not calibrated
    is_anomaly: bool | None  # None: the ROI is not calibrated
    regions: list[Region]
    token_shape: tuple[int, int]
    heatmap_png: bytes | None


def judge(
    prediction: Prediction,
    memory: Memory,
    calibration: dict[str, Any] | None,
    mm_per_px: float,
    area_mm2_thr: float = 0.0,
    heatmap: bool = True,
) -> Verdict:
    """Uncalibrated: no regions and no decision. Calibrated: regions of the map above the
    threshold, those under ``area_mm2_thr`` dropped; anomalous when one survives.

    The heatmap's norm is the threshold when calibrated, else the memory's OK scale, so
    128 means "at the threshold" on every heatmap.
    """
    threshold: float | None = None
    if calibration is None:
        regions: list[Region] = []
        is_anomaly = None
        norm = memory.info.ok_scale
    else:
        threshold = float(calibration["threshold"])
        stored = calibration.get("area_mm2_thr")
        area_thr = float(stored) if isinstance(stored, int | float) else area_mm2_thr
        regions = find_regions(prediction.amap, prediction.mask, threshold, mm_per_px, area_thr)
        is_anomaly = bool(regions)
        norm = threshold
    png = encode_png(heatmap_u8(prediction.amap, norm)) if heatmap else None
    return Verdict(prediction.score, threshold, is_anomaly, regions, prediction.token_shape, png)
