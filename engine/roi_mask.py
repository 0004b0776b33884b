"""ROI masks from the contract's JSON shapes (rect, circle, annulus, polygon)."""

from __future__ import annotations

import json
import math
from typing import Any

import numpy as np

from engine.errors import BadInput
from engine.numbers import finite_number, short_repr
from engine.preprocess import cv2_module

ShapeSpec = dict[str, Any]
# A ROI outline needs tens of vertices; a million takes the engine thread for tens of
# seconds (the points are validated one by one, then drawn).
MAX_POLYGON_POINTS = 10_000


def parse_shape(shape: ShapeSpec | str | None) -> ShapeSpec | None:
    """Accept the shape as a dict (MQTT) or a JSON string (HTTP form); validate its fields."""
    if shape is None or shape == "":
        return None
    if isinstance(shape, str):
        try:
            shape = json.loads(shape)
        except json.JSONDecodeError as exc:
            raise BadInput(f"shape is not valid JSON: {exc.msg}") from None
        except (ValueError, RecursionError) as exc:  # 5000-digit numbers, deep nesting
            raise BadInput(f"shape is not usable JSON: {type(exc).__name__}") from None
    if not isinstance(shape, dict):
        raise BadInput("shape must be a JSON object")
    kind = shape.get("kind")
    fields = _REQUIRED.get(kind) if isinstance(kind, str) else None
    if fields is None:
        raise BadInput(f"shape.kind must be one of {sorted(_REQUIRED)}, got {kind!r}")
    for name in fields:
        _number(shape, name)
    if kind == "polygon":
        _points(shape)
    return shape


def shape_mask(shape: ShapeSpec | None, height: int, width: int) -> np.ndarray:
    """(H, W) bool mask of the pixels inside ``shape``; all True when there is no shape.

    Raises ``BadInput`` for non-positive sizes, ``r_inner >= r_outer``, or a shape that
    covers no pixel of the image.
    """
    if shape is None:
        return np.ones((height, width), dtype=bool)
    spec = parse_shape(shape)
    assert spec is not None
    kind = spec["kind"]
    if kind == "rect":
        mask = _rect(spec, height, width)
    elif kind == "circle":
        mask = _disc(_number(spec, "cx"), _number(spec, "cy"), _positive(spec, "r"), height, width)
    elif kind == "annulus":
        r_outer, r_inner = _positive(spec, "r_outer"), _number(spec, "r_inner")
        if r_inner < 0 or r_inner >= r_outer:
            raise BadInput(f"annulus needs 0 <= r_inner < r_outer, got {r_inner} and {r_outer}")
        cx, cy = _number(spec, "cx"), _number(spec, "cy")
        mask = _disc(cx, cy, r_outer, height, width) & ~_disc(cx, cy, r_inner, height, width)
    else:
        mask = _polygon(spec, height, width)
    if not mask.any():
        raise BadInput(f"shape {kind} covers no pixel of the {width}x{height} image")
    return mask


_REQUIRED: dict[str, tuple[str, ...]] = {
    "rect": ("x", "y", "w", "h"),
    "circle": ("cx", "cy", "r"),
    "annulus": ("cx", "cy", "r_outer", "r_inner"),
    "polygon": (),
}


# No image side reaches this (40 megapixels at most): a coordinate beyond it is out of
# range, and every product below stays far from float overflow.
MAX_COORD = 1e9


def _number(spec: ShapeSpec, name: str) -> float:
    return _coordinate(spec.get(name), f"shape.{name}")


def _coordinate(value: object, name: str) -> float:
    number = finite_number(value, name)
    if abs(number) > MAX_COORD:
        raise BadInput(f"{name} is out of range (|{name}| > {MAX_COORD:g})")
    return number


def _positive(spec: ShapeSpec, name: str) -> float:
    value = _number(spec, name)
    if value <= 0:
        raise BadInput(f"shape.{name} must be positive, got {value}")
    return value


def _rect(spec: ShapeSpec, height: int, width: int) -> np.ndarray:
    x, y = _number(spec, "x"), _number(spec, "y")
    w, h = _positive(spec, "w"), _positive(spec, "h")
    mask = np.zeros((height, width), dtype=bool)
    x0, y0 = max(0, math.floor(x)), max(0, math.floor(y))
    x1, y1 = min(width, math.ceil(x + w)), min(height, math.ceil(y + h))
    if x1 > x0 and y1 > y0:
        mask[y0:y1, x0:x1] = True
    return mask


def _disc(cx: float, cy: float, r: float, height: int, width: int) -> np.ndarray:
    # Pixel centres at integer coordinates, as OpenCV draws them.
    ys = (np.arange(height, dtype=np.float32) - cy) ** 2
    xs = (np.arange(width, dtype=np.float32) - cx) ** 2
    return np.asarray((ys[:, None] + xs[None, :]) <= r * r)


def _points(spec: ShapeSpec) -> np.ndarray:
    points = spec.get("points")
    if not isinstance(points, list) or len(points) < 3:
        raise BadInput("shape.points must be a list of at least 3 [x, y] pairs")
    if len(points) > MAX_POLYGON_POINTS:
        raise BadInput(
            f"shape.points holds {len(points)} points, at most {MAX_POLYGON_POINTS}: "
            "simplify the polygon"
        )
    out = []
    for point in points:
        if not isinstance(point, list | tuple) or len(point) != 2:
            raise BadInput(f"shape.points has an invalid point {short_repr(point)}")
        try:
            out.append([_coordinate(v, "shape.points") for v in point])
        except BadInput:
            raise BadInput(f"shape.points has an invalid point {short_repr(point)}") from None
    return np.asarray(out, dtype=np.float64)


def _polygon(spec: ShapeSpec, height: int, width: int) -> np.ndarray:
    cv2 = cv2_module()
    points = _points(spec)
    # fillPoly takes fixed-point coordinates; 4 fractional bits keep sub-pixel vertices.
    shift = 4
    fixed = np.round(points * (1 << shift)).astype(np.int64)
    limit = 1 << 26  # beyond this OpenCV's fixed-point arithmetic overflows
    if np.abs(fixed).max() > limit:
        raise BadInput("shape.points lie absurdly far outside the image")
    canvas = np.zeros((height, width), dtype=np.uint8)
    cv2.fillPoly(canvas, [fixed.astype(np.int32)], 1, lineType=cv2.LINE_8, shift=shift)
    return canvas.astype(bool)
