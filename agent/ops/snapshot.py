"""Consistent copies of store files while an agent may be writing them.

Every store write is an atomic rename, so a file opened once and read whole is one
complete version (the rename swaps the name, never the bytes behind an open handle).
What can still go wrong is *pairs*: a refit between reading a memory and reading its
calibration. ``read_memory_pair`` re-checks the memory's identity after reading both
and starts over when it changed.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import tarfile
import time
import zipfile
from pathlib import Path
from typing import IO, Any

import numpy as np

from agent.ops.errors import OpsError

ATTEMPTS = 5
Identity = tuple[int, int, int]  # (inode, size, mtime_ns): changes on every atomic replace


def skipped_name(name: str) -> bool:
    """Temp files of atomic writes (``.atomic-*.tmp``), probes and other hidden files."""
    return name.startswith(".")


def read_whole(path: Path) -> tuple[bytes, Identity] | None:
    """The file's bytes through one handle, and which version they are; None if gone."""
    try:
        with open(path, "rb") as handle:
            stat = os.fstat(handle.fileno())
            data = handle.read()
    except FileNotFoundError:
        return None
    return data, (stat.st_ino, stat.st_size, stat.st_mtime_ns)


def identity(path: Path) -> Identity | None:
    try:
        stat = path.stat()
    except FileNotFoundError:
        return None
    return (stat.st_ino, stat.st_size, stat.st_mtime_ns)


def npz_readable(data: bytes) -> bool:
    """Every array of an .npz loads (reading each member checks its zip CRC)."""
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as stored:
            for name in stored.files:
                np.asarray(stored[name])
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
        return False
    return True


def json_readable(data: bytes) -> bool:
    try:
        json.loads(data)
    except ValueError:
        return False
    return True


def calibration_for(memory: Path) -> Path:
    """The calibration beside a memory, in the current layout or the seeds' legacy ones."""
    if memory.name == "memory.npz":  # legacy models/<role>/<roi>/memory.npz
        return memory.with_name("calib.json")
    return memory.with_name(f"{memory.stem}_calib.json")


def read_memory_pair(memory: Path) -> tuple[bytes, bytes | None] | None:
    """A memory and its calibration as they were at one moment, both readable.

    None when the memory is gone. Raises ``OpsError`` when no readable pair could be
    taken in ``ATTEMPTS`` tries (a file damaged on disk, or refits without pause).
    """
    calibration = calibration_for(memory)
    for attempt in range(ATTEMPTS):
        if attempt:
            time.sleep(0.05 * attempt)
        got = read_whole(memory)
        if got is None:
            return None
        data, version = got
        if not npz_readable(data):
            continue  # replaced or damaged mid-read: take it again
        calib = read_whole(calibration)
        if calib is not None and not json_readable(calib[0]):
            continue
        # The memory must still be the one read: else the calibration may belong to a
        # newer memory than the one in hand.
        if identity(memory) != version:
            continue
        return data, None if calib is None else calib[0]
    raise OpsError(f"{memory} is unreadable or kept changing over {ATTEMPTS} tries")


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def add_bytes(tar: tarfile.TarFile, name: str, data: bytes, mtime: float | None = None) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mtime = int(mtime if mtime is not None else time.time())
    info.mode = 0o644
    tar.addfile(info, io.BytesIO(data))


def open_gz_writer(handle: IO[bytes]) -> tarfile.TarFile:
    # Level 1: PNG samples and float16 banks hardly compress; an edge PC's CPU is busy.
    return tarfile.open(fileobj=handle, mode="w:gz", compresslevel=1)


def open_archive(path: Path) -> tarfile.TarFile:
    """A .tar.gz for reading, with every member listed now (a truncated file fails here)."""
    try:
        tar = tarfile.open(path, "r:gz")  # noqa: SIM115 - the caller closes it
    except FileNotFoundError:
        raise OpsError(f"{path} not found") from None
    except (tarfile.TarError, EOFError, OSError, zipfile.BadZipFile) as exc:
        raise OpsError(f"{path} is not a readable .tar.gz ({type(exc).__name__}: {exc})") from None
    try:
        tar.getmembers()
    except (tarfile.TarError, EOFError, OSError) as exc:
        tar.close()
        raise OpsError(f"{path} is truncated or damaged ({type(exc).__name__}: {exc})") from None
    return tar


def member_bytes(tar: tarfile.TarFile, member: tarfile.TarInfo) -> bytes:
    handle = tar.extractfile(member)
    if handle is None:
        raise OpsError(f"archive member {member.name} is not a regular file")
    try:
        return handle.read()
    except (tarfile.TarError, EOFError, OSError) as exc:
        raise OpsError(f"archive member {member.name} is unreadable ({exc})") from None


def read_json_member(tar: tarfile.TarFile, member: tarfile.TarInfo) -> Any:
    try:
        return json.loads(member_bytes(tar, member))
    except ValueError as exc:
        raise OpsError(f"archive member {member.name} is not valid JSON ({exc})") from None
