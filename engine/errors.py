"""Typed engine errors.

Each error names the contract's error ``kind`` (CONTRACT.md section 2) so the agent
can map it to a status code without knowing engine internals.
"""

from __future__ import annotations


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
