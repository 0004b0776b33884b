"""Stored OK/NG samples of each ROI (contract section 4).

    datasets/<recipe_id>/<b64(role)>/<b64(roi)>/{ok,ng}/OK_20251026_121212345.png
                                                       /OK_20251026_121212345.json

The JSON beside each image carries ``mm_per_px``, ``source``, ``timestamp_utc``,
``role_id``, ``roi_id``, ``request_id`` and ``sha256``. It is written before the image,
so every listed image has its metadata; an orphan JSON (crash in between) is ignored.
A write that fails (disk full, read-only) removes what it had claimed and raises
``StorageError``: a sample is stored whole or not at all.
"""

from __future__ import annotations

import builtins
import contextlib
import hashlib
import json
import os
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from engine.atomic import atomic_write_bytes, atomic_write_json
from engine.errors import BadInput, storage_error
from engine.keys import RoiKey, b64_name

LABELS = ("ok", "ng")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")


@dataclass(frozen=True)
class StoredSample:
    image: Path
    meta: dict[str, Any]

    @property
    def sha256(self) -> str:
        value = self.meta.get("sha256")
        if isinstance(value, str) and len(value) == 64:
            return value
        return hashlib.sha256(self.image.read_bytes()).hexdigest()

    @property
    def mm_per_px(self) -> float | None:
        value = self.meta.get("mm_per_px")
        return float(value) if isinstance(value, int | float) else None

    def to_dict(self) -> dict[str, str]:
        return {"file": str(self.image), "meta": str(self.image.with_suffix(".json"))}


def image_suffix(data: bytes) -> str:
    """File suffix from the image's magic bytes (the stored file keeps its own format)."""
    if data.startswith(b"\x89PNG"):
        return ".png"
    if data.startswith(b"\xff\xd8"):
        return ".jpg"
    if data.startswith(b"BM"):
        return ".bmp"
    if data[:4] in (b"II*\x00", b"MM\x00*"):
        return ".tif"
    return ".png"


class DatasetStore:
    def __init__(self, datasets_dir: Path) -> None:
        self.root = Path(datasets_dir)

    def folder(self, key: RoiKey, label: str) -> Path:
        if label not in LABELS:
            raise BadInput(f"label must be 'ok' or 'ng', got {label!r}")
        return self.root / key.recipe_id / b64_name(key.role_id) / b64_name(key.roi_id) / label

    def add(self, key: RoiKey, label: str, data: bytes, meta: dict[str, Any]) -> StoredSample:
        folder = self.folder(key, label)
        try:
            folder.mkdir(parents=True, exist_ok=True)
            image = _claim_name(folder, label.upper(), image_suffix(data))
        except OSError as exc:
            raise storage_error(exc, folder) from exc
        full_meta = {
            **meta,
            "role_id": key.role_id,
            "roi_id": key.roi_id,
            "recipe_id": key.recipe_id,
            "timestamp_utc": datetime.now(UTC).isoformat(timespec="milliseconds"),
            "sha256": hashlib.sha256(data).hexdigest(),
        }
        try:
            atomic_write_json(image.with_suffix(".json"), full_meta)
            atomic_write_bytes(image, data)
        except BaseException:
            _remove(image)  # the claimed name and metadata: no orphan left behind
            raise
        return StoredSample(image, full_meta)

    def remove(self, samples: list[StoredSample]) -> None:
        """Take back samples a failed command had stored (best effort)."""
        for sample in samples:
            _remove(sample.image)

    def list(self, key: RoiKey, label: str) -> list[StoredSample]:
        folder = self.folder(key, label)
        if not folder.is_dir():
            return []
        samples = []
        for path in sorted(folder.iterdir()):
            if path.suffix.lower() in IMAGE_SUFFIXES and not path.name.startswith("."):
                samples.append(StoredSample(path, _read_meta(path.with_suffix(".json"))))
        return samples

    def count(self, key: RoiKey, label: str) -> int:
        return len(self.list(key, label))

    def first_images(self, label: str, n: int) -> builtins.list[Path]:
        """Up to ``n`` stored images of ``label``, across every ROI, in name order."""
        found: builtins.list[Path] = []
        for folder in sorted(self.root.glob(f"*/*/*/{label}")):
            for path in sorted(folder.iterdir()):
                if path.suffix.lower() in IMAGE_SUFFIXES and not path.name.startswith("."):
                    found.append(path)
                    if len(found) == n:
                        return found
        return found

    def delete(self, key: RoiKey, label: str, file: str) -> int:
        if not file or any(c in file for c in "/\\\0") or file.startswith("."):
            raise BadInput(f"file must be a sample's bare file name, got {file!r}")
        image = self.folder(key, label) / file
        if image.suffix.lower() not in IMAGE_SUFFIXES or not image.is_file():
            return 0
        image.unlink()
        image.with_suffix(".json").unlink(missing_ok=True)
        return 1

    def clear(self, key: RoiKey, label: str) -> int:
        removed = 0
        for sample in self.list(key, label):
            sample.image.unlink(missing_ok=True)
            sample.image.with_suffix(".json").unlink(missing_ok=True)
            removed += 1
        return removed

    def scale(self, key: RoiKey, label: str = "ok") -> float | None:
        """The dataset's ``mm_per_px`` (its first sample's), None when empty or unknown."""
        for sample in self.list(key, label):
            if sample.mm_per_px is not None:
                return sample.mm_per_px
        return None


def _claim_name(folder: Path, prefix: str, suffix: str) -> Path:
    """A new unique ``OK_20251026_121212345.png``; a clash gets ``_1``, ``_2``... Claimed
    with O_EXCL on the metadata name so two writers never pick the same one."""
    now = datetime.now(UTC)
    stem = f"{prefix}_{now:%Y%m%d_%H%M%S}{now.microsecond // 1000:03d}"
    for attempt in range(10_000):
        name = stem if attempt == 0 else f"{stem}_{attempt}"
        try:
            fd = os.open(folder / f"{name}.json", os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            continue
        os.close(fd)
        if not (folder / f"{name}{suffix}").exists():
            return folder / f"{name}{suffix}"
    raise RuntimeError(f"no free sample name in {folder}")


def _remove(image: Path) -> None:
    for path in (image, image.with_suffix(".json")):
        with contextlib.suppress(OSError):
            path.unlink(missing_ok=True)


def _read_meta(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}
