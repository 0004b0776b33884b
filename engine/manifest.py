"""What is stored for one ROI: memory, calibration, dataset counts."""

from __future__ import annotations

from typing import Any

from engine.datasets import DatasetStore
from engine.errors import CorruptArtifact
from engine.keys import RoiKey
from engine.store import ModelStore


def roi_manifest(models: ModelStore, datasets: DatasetStore, key: RoiKey) -> dict[str, Any]:
    memory_part: dict[str, Any] = {"exists": False}
    try:
        memory = models.load_memory(key)
    except CorruptArtifact as exc:
        memory, memory_part = None, {"exists": True, "error": str(exc)}
    if memory is not None:
        info = memory.info
        memory_part = {
            "exists": True,
            "n": info.n_embeddings,
            "coreset_size": info.coreset_size,
            "token_shape": list(memory.token_shape),
            "mm_per_px": info.mm_per_px,
            "model_version": info.model_version,
            "created_at": info.created_at,
            # Memories older than the runtime choice were all built by torch fp32.
            "runtime": info.runtime or "torch-fp32",
        }
    try:
        calibration = models.load_calibration(key)
    except CorruptArtifact as exc:
        calibration = {"error": str(exc)}
    return {
        "role_id": key.role_id,
        "roi_id": key.roi_id,
        "model_key": key.model_key,
        "memory": memory_part,
        "calibration": calibration,
        "datasets": {label: datasets.count(key, label) for label in ("ok", "ng")},
    }
