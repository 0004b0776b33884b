"""Identifiers of a ROI and how they become safe file names."""

from __future__ import annotations

import base64
import re
from dataclasses import dataclass

from engine.errors import BadInput

RESERVED_RECIPES = frozenset({"last"})
# base64 grows ids by 4/3: two ids of 90 bytes keep "<b64 role>__<b64 roi>_calib.json" under
# the 255-byte file-name limit of common file systems.
MAX_ID_BYTES = 90


def b64_name(value: str) -> str:
    """URL-safe base64 without padding: any id round-trips and never contains '/' or '..'."""
    return base64.urlsafe_b64encode(value.encode("utf-8")).decode("ascii").rstrip("=")


def from_b64_name(name: str) -> str:
    return base64.urlsafe_b64decode(name + "=" * (-len(name) % 4)).decode("utf-8")


def split_base_name(stem: str) -> tuple[str, str]:
    """``<b64(role)>__<b64(roi)>`` back to ``(role_id, roi_id)``; ValueError if it is not one.

    The first ``__`` is not always the separator: ``_`` is a base64 digit, so a role whose
    encoding ends in ``_`` ("???" is "Pz8_") gives "Pz8___<roi>". Two facts of UTF-8 make
    the split unambiguous: an encoded id never holds ``__`` (twelve 1-bits in a row never
    occur in UTF-8), and never starts with ``_`` or ``-`` (a first byte of 0xF8 or more is
    no UTF-8 lead byte). So the separator is the first ``__`` not followed by ``_``.
    """
    at = stem.find("__")
    if at <= 0:
        raise ValueError(f"{stem!r} is not <b64 role>__<b64 roi>")
    if stem.startswith("_", at + 2):
        at += 1
    return from_b64_name(stem[:at]), from_b64_name(stem[at + 2 :])


def normalise_recipe_id(recipe_id: str | None) -> str:
    """Lower-cased, sanitised to [a-z0-9._-], ``default`` when empty; ``last`` is reserved."""
    if recipe_id is None or not str(recipe_id).strip():
        return "default"
    cleaned = re.sub(r"[^a-z0-9._-]", "_", str(recipe_id).strip().lower())[:80].strip(".")
    if not cleaned:
        return "default"
    if cleaned in RESERVED_RECIPES:
        raise BadInput(f"recipe_id {recipe_id!r} is reserved")
    return cleaned


def legacy_sanitize(value: str) -> str:
    """The seed backend's pre-base64 file-name rule, used only to find legacy files."""
    cleaned = "".join(c if c.isalnum() or c in "-_" else "_" for c in value.strip())
    return cleaned or "default"


def is_text(value: str) -> bool:
    """Encodable as UTF-8: JSON's escapes can carry lone surrogates, which no log, file
    or database can store."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def is_topic_text(value: str) -> bool:
    """Text that MQTT brokers take in a topic name. Ids become topic levels
    (``roi/<role>/<roi>/state``), and mosquitto drops the connection of a client that
    publishes a topic holding a control character (C0, DEL, C1) or a non-character
    (U+FDD0..U+FDEF, U+xxFFFE, U+xxFFFF): one such id would take MQTT down at every
    reconnect, when every ROI state is published again."""
    return is_text(value) and not any(_not_for_topics(ord(c)) for c in value)


def _not_for_topics(code: int) -> bool:
    return (
        code < 0x20 or 0x7F <= code <= 0x9F or 0xFDD0 <= code <= 0xFDEF or (code & 0xFFFE) == 0xFFFE
    )


def check_id(name: str, value: object) -> str:
    if not isinstance(value, str) or not value.strip():
        raise BadInput(f"{name} must be a non-empty string")
    if not is_text(value):  # a lone surrogate ("\ud800" in JSON): no file name holds it
        raise BadInput(f"{name} must be valid Unicode text (no lone surrogates)")
    if len(value.encode("utf-8")) > MAX_ID_BYTES or not is_topic_text(value):
        raise BadInput(
            f"{name} must be at most {MAX_ID_BYTES} bytes of printable characters "
            "(no control characters, DEL or Unicode non-characters)"
        )
    return value


@dataclass(frozen=True)
class RoiKey:
    """``(recipe_id, model_key, role_id, roi_id)``; ``model_key`` defaults to ``roi_id``."""

    role_id: str
    roi_id: str
    recipe_id: str = "default"
    model_key: str = ""

    @classmethod
    def of(
        cls,
        role_id: object,
        roi_id: object,
        recipe_id: str | None = None,
        model_key: str | None = None,
    ) -> RoiKey:
        role = check_id("role_id", role_id)
        roi = check_id("roi_id", roi_id)
        key = check_id("model_key", model_key) if model_key else roi
        return cls(role, roi, normalise_recipe_id(recipe_id), key)

    @property
    def model_dir_name(self) -> str:
        return b64_name(self.model_key or self.roi_id)

    @property
    def base_name(self) -> str:
        return f"{b64_name(self.role_id)}__{b64_name(self.roi_id)}"
