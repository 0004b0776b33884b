"""Wire payloads (dicts from MQTT JSON, HTTP forms, sidecars) -> typed commands.

One place decides what a valid field is, so every adapter refuses the same input with
the same message.
"""

from __future__ import annotations

import base64
import binascii
import os
import stat
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from agent.commands import (
    COMMANDS,
    AddNg,
    CalibrateNg,
    Command,
    DatasetClear,
    DatasetDelete,
    DatasetList,
    FitImages,
    FitOk,
    Health,
    Infer,
    InferBatch,
    Manifest,
    Refit,
)
from agent.errors import AgentError, bad_request
from engine.errors import EngineError
from engine.keys import check_id, is_text, normalise_recipe_id
from engine.numbers import finite_number, short_repr
from engine.roi_mask import parse_shape

# The most items any configuration allows (``max_batch_items`` is checked by the worker):
# past this, a batch is refused before its images are even decoded from base64.
MAX_BATCH_ITEMS = 256
# mm per pixel: 0.01-1 on real lines. Past this bound, area_mm2 = area_px * mm_per_px**2
# can leave float range and make a reply that JSON cannot carry.
MAX_MM_PER_PX = 1000.0
MAX_FILE_NAME_BYTES = 255  # one path component on common file systems


def request_id_of(payload: Mapping[str, Any] | None) -> str | None:
    """The caller's request id if one can be read, for error replies to bad messages."""
    if not isinstance(payload, Mapping):
        return None
    value = payload.get("request_id")
    if not isinstance(value, str) or not 0 < len(value) <= 200 or not is_text(value):
        return None
    return value


def parse_command(
    name: str,
    payload: Mapping[str, Any],
    source: str,
    image_roots: Sequence[Path] = (),
    deadline: float | None = None,
    max_image_bytes: int | None = None,
) -> Command:
    """Raises ``AgentError`` (bad_request / payload_too_large) naming the bad field.

    ``image_roots``: where ``image_path`` may read; ``max_image_bytes``: a file there
    over this size is refused before it is read."""
    cls = COMMANDS.get(name)
    if cls is None:
        raise bad_request(f"unknown command {name!r}; one of {sorted(COMMANDS)}")
    if not isinstance(payload, Mapping):
        raise bad_request("the payload must be a JSON object")
    roots = _Roots(tuple(image_roots), max_image_bytes)
    try:
        return _build(cls, payload, source, roots, deadline)
    except EngineError as exc:
        raise AgentError.from_exception(exc) from None


class _Roots:
    """Where ``image_path`` may read from, and how much."""

    def __init__(self, roots: tuple[Path, ...], max_bytes: int | None) -> None:
        self.roots = roots
        self.max_bytes = max_bytes


def _build(
    cls: type[Command],
    p: Mapping[str, Any],
    source: str,
    roots: _Roots,
    deadline: float | None,
) -> Command:
    common: dict[str, Any] = {
        "request_id": request_id_of(p) or str(uuid.uuid4()),
        "recipe_id": normalise_recipe_id(_opt_str(p, "recipe_id")),
        "source": source,
        "deadline": deadline,
    }
    if cls is Health:
        return Health(**common)
    if cls is InferBatch:
        items = p.get("items")
        if not isinstance(items, list) or not items:
            raise bad_request("items must be a non-empty list of infer inputs")
        if len(items) > MAX_BATCH_ITEMS:
            raise AgentError(
                "payload_too_large",
                f"items holds {len(items)} entries, at most {MAX_BATCH_ITEMS}",
            )
        parsed = []
        for i, item in enumerate(items):
            if not isinstance(item, Mapping):
                raise bad_request(f"items[{i}] must be an object")
            merged = {"recipe_id": p.get("recipe_id"), **item}
            merged.setdefault("request_id", f"{common['request_id']}/{i}")
            parsed.append(_build(Infer, merged, source, roots, deadline))
        return InferBatch(**common, items=tuple(parsed))  # type: ignore[arg-type]
    model_key = _opt_str(p, "model_key")
    roi: dict[str, Any] = {
        "role_id": check_id("role_id", p.get("role_id")),
        "roi_id": check_id("roi_id", p.get("roi_id")),
        "model_key": check_id("model_key", model_key) if model_key is not None else None,
    }
    if cls is FitOk:
        return FitOk(
            **common,
            **roi,
            mm_per_px=_scale(p),
            images=_images(p, roots),
            memory_fit=_bool(p, "memory_fit", True),
            shape=_shape(p),
        )
    if cls is AddNg:
        return AddNg(**common, **roi, mm_per_px=_scale(p), images=_images(p, roots))
    if cls is CalibrateNg:
        return CalibrateNg(
            **common,
            **roi,
            ok_scores=_scores(p, "ok_scores"),
            ng_scores=_scores(p, "ng_scores"),
            mm_per_px=_scale(p) if p.get("mm_per_px") is not None else None,
            area_mm2_thr=_opt_number(p, "area_mm2_thr", minimum=0.0),
            score_percentile=_opt_number(p, "score_percentile", minimum=0.0, maximum=100.0),
            ok_images=_opt_images(p, "ok_images"),
            ng_images=_opt_images(p, "ng_images"),
        )
    if cls is Refit:
        return Refit(
            **common,
            **roi,
            mm_per_px=_scale(p) if p.get("mm_per_px") is not None else None,
            shape=_shape(p),
        )
    if cls is FitImages:
        return FitImages(
            **common,
            **roi,
            mm_per_px=_scale(p),
            images=_images(p, roots),
            shape=_shape(p),
            names=_names(p),
        )
    if cls is Infer:
        return Infer(
            **common,
            **roi,
            mm_per_px=_scale(p),
            image=_single_image(p, roots),
            shape=_shape(p),
            heatmap=_bool(p, "heatmap", True),
            require_calibration=_bool(p, "require_calibration", False),
        )
    if cls is Manifest:
        return Manifest(**common, **roi)
    if cls is DatasetList:
        label = _opt_str(p, "label")
        return DatasetList(**common, **roi, label=_label(label) if label else None)
    if cls is DatasetDelete:
        return DatasetDelete(**common, **roi, label=_label(p.get("label")), file=_file_name(p))
    if cls is DatasetClear:
        return DatasetClear(**common, **roi, label=_label(p.get("label")))
    raise bad_request(f"command {cls.name} cannot be sent this way")  # pragma: no cover


def _file_name(p: Mapping[str, Any]) -> str:
    """A stored sample's bare file name: one path component, nothing hidden."""
    file = p.get("file")
    if not isinstance(file, str) or not file:
        raise bad_request("file must be the sample's file name")
    if (
        not is_text(file)
        or len(file.encode("utf-8")) > MAX_FILE_NAME_BYTES
        or file.startswith(".")
        or any(c in file for c in "/\\")
        or any(ord(c) < 32 for c in file)
    ):
        raise bad_request(f"file must be a sample's bare file name, got {file[:100]!r}")
    return file


def _opt_str(p: Mapping[str, Any], name: str) -> str | None:
    value = p.get(name)
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise bad_request(f"{name} must be a string")
    return value


def _label(value: object) -> str:
    if value not in ("ok", "ng"):
        raise bad_request(f"label must be 'ok' or 'ng', got {value!r}")
    return str(value)


def _number(value: object, name: str) -> float:
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            raise bad_request(f"{name} must be a number, got {short_repr(value)}") from None
    return finite_number(value, name)


def _scale(p: Mapping[str, Any]) -> float:
    if p.get("mm_per_px") is None:
        raise bad_request("mm_per_px is required")
    value = _number(p.get("mm_per_px"), "mm_per_px")
    if not 0 < value <= MAX_MM_PER_PX:
        raise bad_request(f"mm_per_px must be positive and at most {MAX_MM_PER_PX:g}, got {value}")
    return value


def _opt_number(
    p: Mapping[str, Any], name: str, minimum: float | None = None, maximum: float | None = None
) -> float | None:
    if p.get(name) is None or p.get(name) == "":
        return None
    value = _number(p.get(name), name)
    if (minimum is not None and value < minimum) or (maximum is not None and value > maximum):
        raise bad_request(f"{name} must be within [{minimum}, {maximum}], got {value}")
    return value


def _bool(p: Mapping[str, Any], name: str, default: bool) -> bool:
    value = p.get(name)
    if value is None or value == "":
        return default
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "false", "1", "0"):
        return value.lower() in ("true", "1")
    raise bad_request(f"{name} must be true or false, got {value!r}")


def _scores(p: Mapping[str, Any], name: str) -> tuple[float, ...] | None:
    value = p.get(name)
    if value is None:
        return None
    if not isinstance(value, list | tuple):
        raise bad_request(f"{name} must be a list of numbers")
    return tuple(_number(v, f"{name}[{i}]") for i, v in enumerate(value))


def _shape(p: Mapping[str, Any]) -> dict[str, Any] | None:
    return parse_shape(p.get("shape"))


def _image_bytes(value: object, name: str) -> bytes:
    if isinstance(value, bytes | bytearray | memoryview):
        data = bytes(value)
    elif isinstance(value, str):
        text = value.split(",", 1)[1] if value.startswith("data:") else value
        try:
            data = base64.b64decode(text, validate=True)
        except (binascii.Error, ValueError):
            raise bad_request(f"{name} is not valid base64") from None
    else:
        raise bad_request(f"{name} must be a base64 string")
    if not data:
        raise bad_request(f"{name} is empty")
    return data


def _read_path(value: object, roots: _Roots, name: str) -> bytes:
    if not isinstance(value, str) or not value:
        raise bad_request(f"{name} must be a path string")
    if not roots.roots:
        raise bad_request(f"{name} is not allowed: no image roots are configured")
    if not is_text(value) or "\0" in value:
        raise bad_request(f"{name} must be a path of printable text")
    path = Path(value)
    if ".." in path.parts or not path.is_absolute():
        raise bad_request(f"{name} must be an absolute path without '..'")
    resolved = path.resolve()
    if not any(resolved.is_relative_to(root.resolve()) for root in roots.roots):
        raise bad_request(f"{name} {value!r} is outside the allowed image roots")
    # Only a regular file, opened without blocking (a FIFO or device would hang the
    # MQTT thread), and its size checked before a byte is read.
    try:
        fd = os.open(resolved, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOFOLLOW", 0))
    except OSError as exc:
        raise bad_request(f"{name} {value!r} cannot be read: {exc.strerror}") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise bad_request(f"{name} {value!r} is not a regular file")
        if roots.max_bytes is not None and info.st_size > roots.max_bytes:
            raise AgentError(
                "payload_too_large",
                f"{name} {value!r} is {info.st_size} bytes, over the limit of {roots.max_bytes}",
            )
        # fdopen refuses a directory itself, so the check above runs on the bare fd first.
        with os.fdopen(os.dup(fd), "rb") as handle:
            return handle.read()
    except OSError as exc:
        raise bad_request(f"{name} {value!r} cannot be read: {exc.strerror}") from None
    finally:
        os.close(fd)


def _opt_images(p: Mapping[str, Any], name: str) -> tuple[bytes, ...] | None:
    value = p.get(name)
    if value is None:
        return None
    if not isinstance(value, list | tuple):
        raise bad_request(f"{name} must be a list of base64 strings")
    return tuple(_image_bytes(v, f"{name}[{i}]") for i, v in enumerate(value))


def _names(p: Mapping[str, Any]) -> tuple[str, ...]:
    value = p.get("names")
    if value is None:
        return ()
    if not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value):
        raise bad_request("names must be a list of strings")
    return tuple(value)


def _single_image(p: Mapping[str, Any], roots: _Roots) -> bytes:
    if p.get("image") is not None:
        return _image_bytes(p["image"], "image")
    if p.get("image_path") is not None:
        return _read_path(p["image_path"], roots, "image_path")
    raise bad_request("image (base64) or image_path is required")


def _images(p: Mapping[str, Any], roots: _Roots) -> tuple[bytes, ...]:
    images = p.get("images")
    paths = p.get("image_paths")
    out: list[bytes] = []
    if images is not None:
        if not isinstance(images, list | tuple):
            raise bad_request("images must be a list of base64 strings")
        out += [_image_bytes(v, f"images[{i}]") for i, v in enumerate(images)]
    if paths is not None:
        if not isinstance(paths, list | tuple):
            raise bad_request("image_paths must be a list of paths")
        out += [_read_path(v, roots, f"image_paths[{i}]") for i, v in enumerate(paths)]
    if p.get("image") is not None or p.get("image_path") is not None:
        out.append(_single_image(p, roots))
    if not out:
        raise bad_request("images[1..N] is required")
    return tuple(out)
