"""Images in a command: base64 text (MQTT, sidecars), raw bytes (HTTP uploads, folder
files), or a path under the configured image roots (``image_path``, MQTT)."""

from __future__ import annotations

import base64
import binascii
import os
import stat
from pathlib import Path
from typing import Annotated, Any

from pydantic import ValidationInfo

from agent.errors import AgentError, bad_request
from agent.requests.context import ParseContext, context_of
from agent.requests.rules import rule, rule_with_info
from engine.keys import is_text


def image_bytes(value: object, name: str) -> bytes:
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


def read_path(value: object, context: ParseContext, name: str) -> bytes:
    """The bytes of a regular file under one of the image roots; its size is checked
    before a byte is read."""
    if not isinstance(value, str) or not value:
        raise bad_request(f"{name} must be a path string")
    if not context.image_roots:
        raise bad_request(f"{name} is not allowed: no image roots are configured")
    if not is_text(value) or "\0" in value:
        raise bad_request(f"{name} must be a path of printable text")
    path = Path(value)
    if ".." in path.parts or not path.is_absolute():
        raise bad_request(f"{name} must be an absolute path without '..'")
    resolved = path.resolve()
    if not any(resolved.is_relative_to(root.resolve()) for root in context.image_roots):
        raise bad_request(f"{name} {value!r} is outside the allowed image roots")
    # Only a regular file, opened without blocking (a FIFO or device would hang the
    # MQTT thread), and its size checked before a byte is read.
    try:
        fd = os.open(resolved, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOFOLLOW", 0))
    except OSError as exc:
        raise bad_request(f"{name} {value!r} cannot be read: {exc.strerror}") from None
    limit = context.max_image_bytes
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise bad_request(f"{name} {value!r} is not a regular file")
        if limit is not None and info.st_size > limit:
            raise AgentError(
                "payload_too_large",
                f"{name} {value!r} is {info.st_size} bytes, over the limit of {limit}",
            )
        # fdopen refuses a directory itself, so the check above runs on the bare fd first.
        with os.fdopen(os.dup(fd), "rb") as handle:
            return handle.read()
    except OSError as exc:
        raise bad_request(f"{name} {value!r} cannot be read: {exc.strerror}") from None
    finally:
        os.close(fd)


def _listed(value: object, name: str, what: str) -> list[Any]:
    if not isinstance(value, list | tuple):
        raise bad_request(f"{name} must be a list of {what}")
    return list(value)


# -- as field types: refusals name each field as sent (``image_path``, its alias) -----


def _images(value: object, name: str) -> tuple[bytes, ...]:
    listed = _listed(value, name, "base64 strings")
    return tuple(image_bytes(v, f"{name}[{i}]") for i, v in enumerate(listed))


def _path(value: object, info: ValidationInfo) -> bytes | None:
    if info.data.get("image") is not None:
        return None  # ``image`` wins: the path is not even read
    return read_path(value, context_of(info), "image_path")


def _paths(value: object, info: ValidationInfo) -> tuple[bytes, ...]:
    context = context_of(info)
    listed = _listed(value, "image_paths", "paths")
    return tuple(read_path(v, context, f"image_paths[{i}]") for i, v in enumerate(listed))


Image = Annotated[bytes, rule(image_bytes)]
Images = Annotated[tuple[bytes, ...], rule(_images)]
# Read from a path: the field's value is the file's bytes.
ImageFromPath = Annotated[bytes | None, rule_with_info(_path)]
ImagesFromPaths = Annotated[tuple[bytes, ...], rule_with_info(_paths)]
