"""Exact nearest-neighbour search over a memory bank with FAISS."""

from __future__ import annotations

from typing import Any

import numpy as np

METRICS = ("cosine", "l2")


def _faiss() -> Any:
    import faiss

    return faiss


def normalise_rows(x: np.ndarray) -> np.ndarray:
    """(N, D) -> (N, D) float32 rows of unit length (zero rows stay zero)."""
    x = np.asarray(x, dtype=np.float32)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.maximum(norms, 1e-12)


class NearestNeighbourIndex:
    """Distance from each query to its nearest memory rows.

    ``cosine``: 1 - cosine similarity (inner product of unit vectors);
    ``l2``: Euclidean distance.
    """

    def __init__(self, index: Any, metric: str) -> None:
        if metric not in METRICS:
            raise ValueError(f"metric must be one of {METRICS}, got {metric!r}")
        self._index = index
        self.metric = metric

    @classmethod
    def build(cls, memory: np.ndarray, metric: str) -> NearestNeighbourIndex:
        """memory: (M, D) float16/float32."""
        faiss = _faiss()
        if metric not in METRICS:
            raise ValueError(f"metric must be one of {METRICS}, got {metric!r}")
        vectors = _prepare(memory, metric)
        index = (
            faiss.IndexFlatIP(vectors.shape[1])
            if metric == "cosine"
            else faiss.IndexFlatL2(vectors.shape[1])
        )
        index.add(vectors)
        return cls(index, metric)

    @property
    def size(self) -> int:
        return int(self._index.ntotal)

    def search(self, queries: np.ndarray, k: int = 1) -> tuple[np.ndarray, np.ndarray]:
        """queries (Q, D) -> (distances (Q, k) float32, ids (Q, k) int64), nearest first."""
        raw, ids = self._index.search(_prepare(queries, self.metric), k)
        if self.metric == "cosine":
            distances = np.clip(1.0 - raw, 0.0, 2.0)
        else:
            distances = np.sqrt(np.maximum(raw, 0.0))
        return distances.astype(np.float32), ids

    def nearest_distance(self, queries: np.ndarray) -> np.ndarray:
        """(Q, D) -> (Q,) float32 distance to the nearest memory row."""
        return self.search(queries, 1)[0][:, 0]

    def serialize(self) -> bytes:
        return bytes(_faiss().serialize_index(self._index).tobytes())

    @classmethod
    def deserialize(cls, blob: bytes, metric: str) -> NearestNeighbourIndex:
        faiss = _faiss()
        return cls(faiss.deserialize_index(np.frombuffer(blob, dtype=np.uint8)), metric)


def _prepare(x: np.ndarray, metric: str) -> np.ndarray:
    x = np.ascontiguousarray(x, dtype=np.float32)
    return normalise_rows(x) if metric == "cosine" else x
