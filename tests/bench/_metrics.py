"""Quality metrics: rank-based AUROC and a coreset's coverage radius."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def average_ranks(values: np.ndarray) -> np.ndarray:
    """1-based ranks; tied values share the mean of their positions."""
    order = np.argsort(values, kind="mergesort")
    ordered = values[order]
    starts = np.r_[0, np.flatnonzero(np.diff(ordered)) + 1]
    ends = np.r_[starts[1:], len(values)]
    ranks = np.empty(len(values), dtype=np.float64)
    ranks[order] = np.repeat((starts + ends + 1) / 2.0, ends - starts)
    return ranks


def auroc(negatives: Sequence[float], positives: Sequence[float]) -> float:
    """P(score of a positive > score of a negative), ties counting one half (Mann-Whitney U)."""
    neg = np.asarray(negatives, dtype=np.float64)
    pos = np.asarray(positives, dtype=np.float64)
    if len(neg) == 0 or len(pos) == 0:
        return float("nan")
    ranks = average_ranks(np.concatenate([neg, pos]))
    u_stat = ranks[len(neg) :].sum() - len(pos) * (len(pos) + 1) / 2.0
    return float(u_stat / (len(neg) * len(pos)))


def coverage(
    points: np.ndarray, centres: np.ndarray, chunk_rows: int = 8192
) -> tuple[float, float]:
    """(max, mean) over ``points`` of the Euclidean distance to the nearest centre.

    The max is the k-center objective (the coverage radius) that greedy selection
    minimises; exact FAISS search, in chunks so the distance blocks stay small.
    """
    import faiss

    index = faiss.IndexFlatL2(points.shape[1])
    index.add(np.ascontiguousarray(centres, dtype=np.float32))
    radius, total = 0.0, 0.0
    for start in range(0, len(points), chunk_rows):
        block = np.ascontiguousarray(points[start : start + chunk_rows], dtype=np.float32)
        squared, _ = index.search(block, 1)
        dist = np.sqrt(np.maximum(squared[:, 0].astype(np.float64), 0.0))
        radius = max(radius, float(dist.max()))
        total += float(dist.sum())
    return radius, total / len(points)
