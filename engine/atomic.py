"""Atomic file writes: temp file in the same folder, fsync, rename, fsync the folder.

A crash at any moment leaves either the old file or the new one, never part of one.
A SIGKILL between the temp file and the rename leaves a ``.atomic-XXXX.tmp`` beside the
target: every reader of the data root skips names starting with ".", so it is never taken
for data (it only holds space until removed). A failed write (disk full, read-only) raises
``StorageError`` naming the file, and leaves nothing behind.

The file gets the mode a plain ``open()`` would give it (0666 less the umask), not the
temp file's 0600: results and datasets are read by people and programs of the agent's
group (the service's ``UMask=0007`` gives 0660, a shell's 022 gives 0644).
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

from engine.errors import storage_error

TEMP_PREFIX = ".atomic-"


def atomic_write(path: Path, write: Callable[[IO[bytes]], None]) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        # A short temp name: the final name may already be near the file-name length limit.
        fd, tmp_name = tempfile.mkstemp(prefix=TEMP_PREFIX, suffix=".tmp", dir=path.parent)
    except OSError as exc:
        raise storage_error(exc, path) from exc
    try:
        os.fchmod(fd, new_file_mode())
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp_name, path)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            Path(tmp_name).unlink(missing_ok=True)
        if isinstance(exc, OSError):
            raise storage_error(exc, path) from exc
        raise
    fsync_dir(path.parent)


def new_file_mode() -> int:
    """0666 less the process's umask: the mode ``open()`` gives a new file."""
    return 0o666 & ~current_umask()


def current_umask() -> int:
    """Read without changing it where Linux shows it (changing it is not thread-safe)."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: Path, data: bytes) -> None:
    def write(handle: IO[bytes]) -> None:
        handle.write(data)

    atomic_write(path, write)


def atomic_write_json(path: Path, payload: Any) -> None:
    data = json.dumps(payload, indent=2, sort_keys=True, ensure_ascii=False).encode()
    atomic_write_bytes(path, data + b"\n")


def fsync_dir(folder: Path) -> None:
    # The rename is only durable once the folder entry itself reaches the disk.
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
