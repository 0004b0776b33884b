"""The contract's error kinds, their status codes, and the one error body."""

from __future__ import annotations

import errno
from typing import Any

from engine.errors import STORAGE_ERRNOS, EngineError, storage_error

WRITE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS})

STATUS_BY_KIND: dict[str, int] = {
    "bad_request": 400,
    "not_fitted": 400,
    "token_mismatch": 400,
    "unauthorized": 401,
    "payload_too_large": 413,
    "scale_mismatch": 409,
    "not_calibrated": 428,
    "busy": 503,
    "internal": 500,
}


class AgentError(Exception):
    """A refusal with a contract ``kind``; ``code`` is its status code."""

    def __init__(self, kind: str, message: str) -> None:
        if kind not in STATUS_BY_KIND:
            raise ValueError(f"unknown error kind {kind!r}")
        super().__init__(message)
        self.kind = kind
        self.message = message

    @property
    def code(self) -> int:
        return STATUS_BY_KIND[self.kind]

    def body(self) -> dict[str, Any]:
        return {"code": self.code, "kind": self.kind, "message": self.message}

    @classmethod
    def from_exception(cls, exc: BaseException) -> AgentError:
        if isinstance(exc, AgentError):
            return exc
        if isinstance(exc, EngineError):
            return cls(exc.kind, str(exc))
        if isinstance(exc, OSError) and exc.errno in STORAGE_ERRNOS:
            # Outside engine.atomic: a delete on a read-only disk, an unreadable folder...
            verb = "write" if exc.errno in WRITE_ERRNOS else "access"
            return cls("internal", str(storage_error(exc, verb=verb)))
        return cls("internal", f"internal error ({type(exc).__name__}); see the agent log")


def bad_request(message: str) -> AgentError:
    return AgentError("bad_request", message)


def busy(message: str) -> AgentError:
    return AgentError("busy", message)
