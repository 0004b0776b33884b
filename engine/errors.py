"""Typed engine errors.

Each error names the contract's error ``kind`` (CONTRACT.md section 2) so the agent
can map it to a status code without knowing engine internals.
"""

from __future__ import annotations

import errno
from pathlib import Path


class EngineError(Exception):
    """Base class: anything the engine refuses on purpose."""

    kind: str = "internal"


class BadInput(EngineError):
    """Undecodable or empty image, invalid shape, invalid number."""

    kind = "bad_request"


class TooLarge(EngineError):
    """An image over the configured byte or pixel limits."""

    kind = "payload_too_large"


class NotFitted(EngineError):
    """Scoring asked of a ROI that has no memory."""

    kind = "not_fitted"


class TokenMismatch(EngineError):
    """The image's token grid differs from the memory's."""

    kind = "token_mismatch"


class ScaleMismatch(EngineError):
    """``mm_per_px`` differs from the stored memory's or dataset's by more than 1 %."""

    kind = "scale_mismatch"


class ModelUnavailable(EngineError):
    """The backbone could not be loaded (weights missing or unreadable)."""

    kind = "busy"


class CorruptArtifact(EngineError):
    """A stored model or calibration file exists but cannot be read."""

    kind = "internal"


class CorruptMemory(CorruptArtifact):
    """The ROI's memory file cannot be read: for its callers the ROI has no usable memory,
    and a refit (``fit_ok``) writes a new one."""

    kind = "not_fitted"


class CorruptCalibration(CorruptArtifact):
    """The ROI's calibration file cannot be read: no threshold to decide with, and
    ``calibrate_ng`` writes a new one. Refused rather than answered uncalibrated, so a
    line never takes a missing decision for a pass."""

    kind = "not_calibrated"


class StorageError(EngineError, OSError):
    """A write to the data root failed: disk full, read-only, no permission, I/O error.

    Still an ``OSError`` (with ``errno`` and ``filename``) for callers that catch those.
    The contract has no kind for it: ``internal``, with a message that says what to do.
    """

    kind = "internal"

    def __init__(self, code: int | None, message: str, filename: str | None = None) -> None:
        super().__init__(code, message, filename)
        self.message = message

    def __str__(self) -> str:
        return self.message


# Why a write failed, and what an operator must do about it.
_STORAGE_ADVICE = {
    errno.ENOSPC: (
        "no space left on device",
        "free space on the data root's disk and send the command again",
    ),
    errno.EDQUOT: (
        "disk quota exceeded",
        "free space on the data root or raise the quota, then send the command again",
    ),
    errno.EROFS: (
        "the data root is read-only",
        "inspection works, but storing samples, models or calibrations needs a writable disk",
    ),
    errno.EACCES: ("permission denied", "the agent's user must be able to write the data root"),
    errno.EPERM: (
        "operation not permitted",
        "the agent's user must be able to write the data root",
    ),
    errno.EIO: ("I/O error", "check the data root's disk"),
}
STORAGE_ERRNOS = frozenset(_STORAGE_ADVICE)


def storage_error(
    exc: OSError, path: Path | str | None = None, verb: str = "write"
) -> StorageError:
    """``exc`` (a failed write) as a ``StorageError`` whose message names the file."""
    if isinstance(exc, StorageError):
        return exc
    where = str(path or exc.filename or "the data root")
    reason, advice = _STORAGE_ADVICE.get(exc.errno or 0, (str(exc), ""))
    message = f"{reason}: cannot {verb} {where}" + (f"; {advice}" if advice else "")
    return StorageError(exc.errno, message, where)
