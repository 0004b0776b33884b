"""Per-sample patch embeddings on disk, so a refit runs the backbone only on new images.

Keyed by the sample's sha256 and the extractor's ``cache_id`` (weights hash, input size,
layers, and the runtime and precision that computed the features): changing any of them
simply misses the cache, so a memory is never built from another runtime's embeddings.
"""

from __future__ import annotations

import contextlib
import io
import zipfile
from pathlib import Path

import numpy as np

from engine.atomic import atomic_write_bytes


class EmbeddingCache:
    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def _path(self, feature_id: str, sha256: str) -> Path:
        return self.root / feature_id / sha256[:2] / f"{sha256}.npz"

    def get(self, feature_id: str, sha256: str) -> tuple[np.ndarray, tuple[int, int]] | None:
        """((h, w, C) float16 embedding, (H, W) of the source image), or None when absent
        or unreadable (a damaged entry is just recomputed)."""
        path = self._path(feature_id, sha256)
        try:
            with np.load(path, allow_pickle=False) as stored:
                height, width = (int(v) for v in stored["image_hw"])
                return np.asarray(stored["embedding"]), (height, width)
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
            return None

    def put(
        self, feature_id: str, sha256: str, embedding: np.ndarray, image_hw: tuple[int, int]
    ) -> None:
        buffer = io.BytesIO()
        np.savez(
            buffer,
            embedding=np.asarray(embedding, dtype=np.float16),
            image_hw=np.asarray(image_hw, dtype=np.int64),
        )
        # A cache that cannot be written (disk full, read-only) is just a miss next time.
        with contextlib.suppress(OSError):
            atomic_write_bytes(self._path(feature_id, sha256), buffer.getvalue())
