"""JSON-lines output: one object per measurement on stdout, chatter on stderr."""

from __future__ import annotations

import json
import math
import operator
import os
import sys
from collections.abc import Callable
from typing import Any, TextIO

_OPS: dict[str, Callable[[float, float], bool]] = {
    "<": operator.lt,
    "<=": operator.le,
    ">": operator.gt,
    ">=": operator.ge,
}


_json_out: TextIO | None = None  # the real stdout, once claim_stdout() has run


def claim_stdout() -> None:
    """Keep the process's stdout for JSON lines alone and point fd 1 at stderr.

    Anything else that writes to stdout (a print, a logger bound to sys.stdout, a child
    process) then lands on stderr and can never corrupt the JSON lines.
    """
    global _json_out
    if _json_out is not None:
        return
    sys.stdout.flush()
    _json_out = os.fdopen(os.dup(1), "w", buffering=1, encoding="utf-8")
    os.dup2(2, 1)


def log(message: str) -> None:
    print(f"[bench] {message}", file=sys.stderr, flush=True)


def _clean(value: Any) -> Any:
    """JSON-safe: numpy scalars to Python, floats rounded, NaN/inf to None (not valid JSON)."""
    if hasattr(value, "item") and callable(value.item) and getattr(value, "ndim", 1) == 0:
        value = value.item()
    if isinstance(value, float):
        return round(value, 4) if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(v) for v in value]
    return value


def emit(name: str, **fields: Any) -> dict[str, Any]:
    """Print one measurement as a JSON line on stdout and return it."""
    record = {"name": name, **{key: _clean(value) for key, value in fields.items()}}
    print(json.dumps(record), file=_json_out or sys.stdout, flush=True)
    return record


def emit_target(
    name: str, value: float | None, op: str, target: float, unit: str, **fields: Any
) -> bool:
    """A measurement with a target: ``value op target`` decides ``"pass"``.

    A missing or non-finite value fails: a comparison that could not be made must not pass.
    """
    passed = value is not None and math.isfinite(value) and _OPS[op](value, target)
    emit(
        name,
        value=value,
        unit=unit,
        target={"op": op, "value": target},
        **{"pass": bool(passed)},
        **fields,
    )
    return bool(passed)
