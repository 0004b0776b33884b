"""Side-by-side comparisons of one run, each with its target and whether it was met.

A comparison is a JSON line: the two figures, their ratio (or difference) as ``value``,
the ``target`` written next to it, and ``"met"`` (also as ``"pass"``, the key every other
bench's targets carry). A comparison that could not be made is not met.
"""

from __future__ import annotations

import math
from typing import Any

from tests.bench._report import _OPS, emit


def emit_met(
    name: str, value: float | None, op: str, target: float, unit: str, **fields: Any
) -> bool:
    met = value is not None and math.isfinite(value) and _OPS[op](value, target)
    emit(
        name,
        value=value,
        unit=unit,
        target={"op": op, "value": target},
        met=bool(met),
        **{"pass": bool(met)},
        **fields,
    )
    return bool(met)


def ratio(numerator: float | None, denominator: float | None) -> float | None:
    """numerator / denominator; None when either is missing or the denominator is not > 0."""
    if numerator is None or denominator is None or denominator <= 0:
        return None
    return numerator / denominator
