"""Models and calibrations on disk (contract section 4).

    models/recipes/<recipe_id>/<b64(model_key)>/<b64(role)>__<b64(roi)>.npz
    models/recipes/<recipe_id>/<b64(model_key)>/<b64(role)>__<b64(roi)>_calib.json

The seeds' legacy layouts (``models/<role>/<roi>/memory.npz`` and a flat
``models/<role>_<roi>.npz``) are read, never written. No answer depends on an
in-process cache: ``signature()`` lets callers notice a refit by another process, and
``refit_lock()`` serialises refits of one ROI across the processes sharing the root.
"""

from __future__ import annotations

import contextlib
import fcntl
import io
import json
import os
import time
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from engine.atomic import atomic_write, atomic_write_json
from engine.errors import CorruptCalibration, CorruptMemory, storage_error
from engine.keys import RoiKey, from_b64_name, legacy_sanitize, split_base_name
from engine.memory import Memory, MemoryInfo

Signature = tuple[int, int, int]  # (inode, size, mtime_ns): changes on every atomic replace


class ModelStore:
    def __init__(self, models_dir: Path) -> None:
        self.root = Path(models_dir)

    # -- paths --------------------------------------------------------------------

    def model_dir(self, key: RoiKey) -> Path:
        return self.root / "recipes" / key.recipe_id / key.model_dir_name

    def memory_path(self, key: RoiKey) -> Path:
        return self.model_dir(key) / f"{key.base_name}.npz"

    def calibration_path(self, key: RoiKey) -> Path:
        return self.model_dir(key) / f"{key.base_name}_calib.json"

    def _legacy_candidates(self, key: RoiKey, suffix: str, legacy_file: str) -> list[Path]:
        if key.recipe_id != "default" or key.model_key != key.roi_id:
            return []  # the legacy backends knew neither recipes nor model keys
        role, roi = legacy_sanitize(key.role_id), legacy_sanitize(key.roi_id)
        return [self.root / f"{role}_{roi}{suffix}", self.root / role / roi / legacy_file]

    def _existing(self, current: Path, legacy: list[Path]) -> Path | None:
        for path in (current, *legacy):
            if path.is_file():
                return path
        return None

    def find_memory(self, key: RoiKey) -> Path | None:
        return self._existing(
            self.memory_path(key), self._legacy_candidates(key, ".npz", "memory.npz")
        )

    def find_calibration(self, key: RoiKey) -> Path | None:
        return self._existing(
            self.calibration_path(key), self._legacy_candidates(key, "_calib.json", "calib.json")
        )

    def roi_keys(self) -> list[RoiKey]:
        """Every ROI with a memory in the current layout (legacy files are not listed)."""
        out = []
        for path in sorted((self.root / "recipes").glob("*/*/*__*.npz")):
            try:
                role, roi = split_base_name(path.stem)
                key = RoiKey(
                    role,
                    roi,
                    path.parent.parent.name,
                    from_b64_name(path.parent.name),
                )
            except ValueError:
                continue  # not a name this store wrote
            out.append(key)
        return out

    # -- memory -------------------------------------------------------------------

    def signature(self, key: RoiKey) -> Signature | None:
        path = self.find_memory(key)
        if path is None:
            return None
        try:
            stat = path.stat()
        except FileNotFoundError:
            return None
        return (stat.st_ino, stat.st_size, stat.st_mtime_ns)

    def save_memory(self, key: RoiKey, memory: Memory) -> Path:
        path = self.memory_path(key)
        metadata = json.dumps(memory.info.to_json())

        def write(handle: Any) -> None:
            np.savez(
                handle,
                emb=np.asarray(memory.bank, dtype=np.float16),
                sources=np.asarray(memory.sources, dtype=np.int32),
                token_h=np.int64(memory.token_shape[0]),
                token_w=np.int64(memory.token_shape[1]),
                metadata=np.array(metadata),
            )

        atomic_write(path, write)
        return path

    def load_memory(self, key: RoiKey) -> Memory | None:
        """The stored memory, or None when the ROI was never fitted.

        Raises ``CorruptMemory`` when a file exists but cannot be read.
        """
        path = self.find_memory(key)
        return None if path is None else read_memory(path)

    @contextlib.contextmanager
    def refit_lock(self, key: RoiKey, waiting: Callable[[], None] | None = None) -> Iterator[None]:
        """Held around "read the OK dataset -> build -> save" of one ROI, so that of two
        agents refitting it at once the second builds from the first's samples too and
        the memory saved last covers the whole dataset. An advisory ``flock`` on a hidden
        file beside the memory: released by the kernel when its holder dies, so a crash
        never leaves it taken. ``waiting`` is called while another holder has it."""
        path = self.model_dir(key) / f".{key.base_name}.lock"
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise storage_error(exc, path) from exc
        try:
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if waiting is not None:
                        waiting()
                    time.sleep(0.02)
            yield
        finally:
            os.close(fd)  # releases the lock

    def delete_memory(self, key: RoiKey) -> bool:
        removed = False
        for path in (self.memory_path(key), self.calibration_path(key)):
            if path.is_file():
                path.unlink()
                removed = True
        return removed

    # -- calibration --------------------------------------------------------------

    def save_calibration(self, key: RoiKey, calibration: dict[str, Any]) -> Path:
        path = self.calibration_path(key)
        atomic_write_json(path, calibration)
        return path

    def load_calibration(self, key: RoiKey) -> dict[str, Any] | None:
        path = self.find_calibration(key)
        if path is None:
            return None
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise _corrupt_calibration(path, str(exc)) from None
        if not isinstance(data, dict) or not isinstance(data.get("threshold"), int | float):
            raise _corrupt_calibration(path, "no numeric threshold")
        return data


def _corrupt_calibration(path: Path, why: str) -> CorruptCalibration:
    return CorruptCalibration(
        f"the ROI's calibration file {path.name} is unreadable ({why}); "
        "calibrate the ROI again with calibrate_ng"
    )


def _corrupt_memory(path: Path, why: str) -> CorruptMemory:
    return CorruptMemory(
        f"the ROI's model file {path.name} is unreadable ({why}); refit the ROI with fit_ok"
    )


def read_memory(path: Path) -> Memory:
    try:
        data = path.read_bytes()
        with np.load(io.BytesIO(data), allow_pickle=False) as stored:
            bank = np.asarray(stored["emb"])
            token_shape = (int(stored["token_h"]), int(stored["token_w"]))
            sources = (
                np.asarray(stored["sources"], dtype=np.int32)
                if "sources" in stored.files
                else np.zeros(len(bank), dtype=np.int32)
            )
            raw_meta = str(stored["metadata"][()]) if "metadata" in stored.files else "{}"
        metadata = json.loads(raw_meta) if raw_meta else {}
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as exc:
        # numpy calls anything that is not an .npy/.npz "pickled data": say what it is.
        why = "not an .npz file" if "pickle" in str(exc) else str(exc) or type(exc).__name__
        raise _corrupt_memory(path, why) from None
    if bank.ndim != 2 or len(sources) != len(bank) or len(bank) == 0:
        raise _corrupt_memory(path, f"malformed bank of shape {bank.shape}")
    info = MemoryInfo.from_json(metadata if isinstance(metadata, dict) else {}, len(bank))
    if not info.created_at:
        mtime = os.stat(path).st_mtime
        info = MemoryInfo.from_json({**metadata, "created_at": str(mtime)}, len(bank))
    return Memory(bank, sources, token_shape, info)
