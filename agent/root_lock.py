"""The data root's lock: agents hold it *shared* while they run, ``bdi-agent restore``
holds it *exclusive*. A restore therefore never moves the files of a running agent aside
(its open journal, its spool), and no agent starts on a data root half restored.

An advisory ``flock`` on ``<data_root>/.agent.lock`` (hidden: no reader of the data root
takes it for data). The kernel releases it when its holder exits, however it exits, so a
crash never leaves it taken. Several agents on one root (a pool, uvicorn workers) hold it
together. A data root the agent cannot write (an inspection-only node) holds no lock file
and is not locked: no restore can write there either.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path
from types import TracebackType

from agent.startup import StartupRefused

LOCK_NAME = ".agent.lock"


class RootLock:
    def __init__(self, path: Path, fd: int | None) -> None:
        self.path = path
        self._fd = fd

    @property
    def held(self) -> bool:
        return self._fd is not None

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor releases the flock
            self._fd = None

    def __enter__(self) -> RootLock:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.release()


def lock_path(data_root: Path) -> Path:
    return Path(data_root) / LOCK_NAME


def hold_shared(data_root: Path) -> RootLock:
    """Taken by a starting agent; raises ``StartupRefused`` while a restore runs."""
    path = lock_path(data_root)
    fd = _open(path)
    if fd is None:
        return RootLock(path, None)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise StartupRefused(
            f"a restore is running on the data root {data_root} (it holds {path}); "
            "start the agent once bdi-agent restore has finished"
        ) from None
    return RootLock(path, fd)


def try_exclusive(data_root: Path) -> RootLock | None:
    """Taken by ``restore``: None while an agent (or another restore) holds the root."""
    path = lock_path(data_root)
    fd = _open(path)
    if fd is None:
        return RootLock(path, None)  # restore fails on its own, with its own message
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return RootLock(path, fd)


def _open(path: Path) -> int | None:
    """The lock file, created (mode 0666 less the umask) when the root is writable."""
    with contextlib.suppress(OSError):
        path.parent.mkdir(parents=True, exist_ok=True)
    for flags in (os.O_RDWR | os.O_CREAT, os.O_RDONLY):
        try:
            return os.open(path, flags | os.O_CLOEXEC, 0o666)
        except OSError:
            continue
    return None
