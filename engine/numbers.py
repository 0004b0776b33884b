"""Numbers as JSON brings them: the checks every field of a command or a shape shares."""

from __future__ import annotations

import math

from engine.errors import BadInput


def short_repr(value: object, limit: int = 100) -> str:
    """``repr(value)`` cut to ``limit`` characters, for messages about hostile input."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[: limit - 3]}..."


def finite_number(value: object, name: str) -> float:
    """A JSON number (int or float, not bool) as a finite float; ``BadInput`` naming
    ``name`` otherwise."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise BadInput(f"{name} must be a finite number, got {short_repr(value)}")
    try:
        number = float(value)  # a JSON integer may be far beyond float range
    except OverflowError:
        raise BadInput(f"{name} must be a finite number, got one beyond float range") from None
    if not math.isfinite(number):
        raise BadInput(f"{name} must be a finite number, got {value!r}")
    return number
