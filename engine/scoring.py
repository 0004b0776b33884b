"""From patch distances to the contract's map, score, heatmap and regions."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from engine.preprocess import cv2_module


@dataclass(frozen=True)
class Region:
    """One connected anomalous area, in input-image pixels."""

    x: int
    y: int
    w: int
    h: int
    cx: float
    cy: float
    area_px: int
    area_mm2: float
    max_score: float
    mean_score: float

    def to_dict(self) -> dict[str, float | int]:
        return asdict(self)


def anomaly_map(
    patch_distances: np.ndarray, out_hw: tuple[int, int], sigma: float = 4.0
) -> np.ndarray:
    """(h, w) patch distances -> (H, W) float32: bilinear upsampling, then Gaussian blur.

    OpenCV's blur is separable (two 1-D passes), far cheaper than a dense 2-D kernel.
    """
    cv2 = cv2_module()
    height, width = out_hw
    grid = np.ascontiguousarray(patch_distances, dtype=np.float32)
    upsampled = cv2.resize(grid, (width, height), interpolation=cv2.INTER_LINEAR)
    if sigma <= 0:
        return np.asarray(upsampled)
    return np.asarray(cv2.GaussianBlur(upsampled, (0, 0), sigmaX=sigma, sigmaY=sigma))


def masked_score(amap: np.ndarray, mask: np.ndarray | None) -> tuple[np.ndarray, float]:
    """Zero the map outside the ROI; the image score is the max inside it."""
    if mask is None:
        return amap, float(amap.max())
    masked = np.where(mask, amap, np.float32(0.0)).astype(np.float32, copy=False)
    return masked, float(amap[mask].max())


def heatmap_u8(amap: np.ndarray, norm: float) -> np.ndarray:
    """(H, W) float map -> (H, W) uint8 where 128 means "at the threshold" (norm)."""
    scale = 255.0 / (2.0 * norm) if norm > 0 else 0.0
    return np.clip(amap * scale, 0, 255).astype(np.uint8)


def encode_png(gray: np.ndarray) -> bytes:
    cv2 = cv2_module()
    ok, buf = cv2.imencode(".png", gray, [cv2.IMWRITE_PNG_COMPRESSION, 1])
    if not ok:  # pragma: no cover - encoding a valid uint8 array does not fail
        raise RuntimeError("PNG encoding failed")
    return bytes(buf.tobytes())


def find_regions(
    amap: np.ndarray,
    mask: np.ndarray | None,
    threshold: float,
    mm_per_px: float,
    area_mm2_thr: float = 0.0,
) -> list[Region]:
    """Connected components of ``amap > threshold`` inside the mask, largest peak first.

    Regions whose ``area_mm2`` is under ``area_mm2_thr`` are dropped.
    """
    cv2 = cv2_module()
    hot = amap > threshold
    if mask is not None:
        hot &= mask
    if not hot.any():
        return []
    count, labels, stats, centroids = cv2.connectedComponentsWithStats(
        hot.astype(np.uint8), connectivity=8
    )
    px_area_mm2 = mm_per_px * mm_per_px
    regions = []
    for label in range(1, count):
        area_px = int(stats[label, cv2.CC_STAT_AREA])
        area_mm2 = area_px * px_area_mm2
        if area_mm2 < area_mm2_thr:
            continue
        x, y = int(stats[label, cv2.CC_STAT_LEFT]), int(stats[label, cv2.CC_STAT_TOP])
        w, h = int(stats[label, cv2.CC_STAT_WIDTH]), int(stats[label, cv2.CC_STAT_HEIGHT])
        window = labels[y : y + h, x : x + w] == label
        values = amap[y : y + h, x : x + w][window]
        regions.append(
            Region(
                x=x,
                y=y,
                w=w,
                h=h,
                cx=round(float(centroids[label, 0]), 2),
                cy=round(float(centroids[label, 1]), 2),
                area_px=area_px,
                area_mm2=round(area_mm2, 6),
                max_score=float(values.max()),
                mean_score=float(values.mean()),
            )
        )
    regions.sort(key=lambda region: region.max_score, reverse=True)
    return regions
