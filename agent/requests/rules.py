"""The field rules every command shares: how a wire value becomes a typed one, and the
refusal, naming the field, when it cannot.

A rule is a plain function ``check(value, field_name)`` that returns the typed value or
raises ``AgentError`` / ``BadInput``; ``rule`` makes it a pydantic validator that keeps
the refusal's kind (``bad_request``, ``payload_too_large``) and message. The values come
as JSON brings them (MQTT, sidecars) or as text (HTTP forms and queries), so every rule
takes both.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any

from pydantic import BeforeValidator, ValidationInfo
from pydantic_core import PydanticCustomError

from agent.errors import AgentError, bad_request
from engine.errors import EngineError
from engine.keys import check_id, is_text, normalise_recipe_id
from engine.numbers import finite_number, short_repr
from engine.roi_mask import parse_shape

# mm per pixel: 0.01-1 on real lines. Past this bound, area_mm2 = area_px * mm_per_px**2
# can leave float range and make a reply that JSON cannot carry.
MAX_MM_PER_PX = 1000.0
MAX_FILE_NAME_BYTES = 255  # one path component on common file systems
LABELS = ("ok", "ng")
FLAG_TEXT = {"true": True, "1": True, "false": False, "0": False}


def refusal(error: AgentError | EngineError) -> PydanticCustomError:
    """A refusal as a validation error: its ``type`` is the contract kind. No context is
    given, so the message is never formatted (it may quote the caller's braces)."""
    if isinstance(error, AgentError):
        return PydanticCustomError(error.kind, error.message)
    return PydanticCustomError(error.kind, str(error))


def rule(check: Callable[[Any, str], Any]) -> BeforeValidator:
    """``check(value, field_name)`` as a field validator (before pydantic's own)."""
    return rule_with_info(lambda value, info: check(value, info.field_name or "value"))


def rule_with_info(check: Callable[[Any, ValidationInfo], Any]) -> BeforeValidator:
    """``check(value, info)``: for rules that need the parse context or earlier fields."""

    def validate(value: Any, info: ValidationInfo) -> Any:
        try:
            return check(value, info)
        except (AgentError, EngineError) as error:
            raise refusal(error) from None

    return BeforeValidator(validate)


# -- the checks ------------------------------------------------------------------------


def readable_request_id(value: object) -> str | None:
    """The caller's request id when it can be echoed (UTF-8 text, 1-200 characters)."""
    if not isinstance(value, str) or not 0 < len(value) <= 200 or not is_text(value):
        return None
    return value


def text(value: object, name: str) -> str:
    if not isinstance(value, str):
        raise bad_request(f"{name} must be a string")
    return value


def identifier(value: object, name: str) -> str:
    return check_id(name, value)


def recipe_id(value: object, name: str) -> str:
    """Lower-cased and sanitised like every recipe id; ``last`` is reserved."""
    return normalise_recipe_id(text(value, name))


def number(value: object, name: str) -> float:
    """A JSON number, or text holding one (HTTP forms send text)."""
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            raise bad_request(f"{name} must be a number, got {short_repr(value)}") from None
    return finite_number(value, name)


def scale(value: object, name: str) -> float:
    value = number(value, name)
    if not 0 < value <= MAX_MM_PER_PX:
        raise bad_request(f"{name} must be positive and at most {MAX_MM_PER_PX:g}, got {value}")
    return value


def within(minimum: float, maximum: float | None = None) -> Callable[[object, str], float]:
    def check(value: object, name: str) -> float:
        value = number(value, name)
        if maximum is None and value < minimum:
            raise bad_request(f"{name} must be at least {minimum:g}, got {value}")
        if maximum is not None and not minimum <= value <= maximum:
            raise bad_request(f"{name} must be within [{minimum:g}, {maximum:g}], got {value}")
        return value

    return check


def flag(value: object, name: str) -> bool:
    """true/false as JSON or as the text of a form ("true", "false", "1", "0")."""
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in FLAG_TEXT:
        return FLAG_TEXT[value.lower()]
    raise bad_request(f"{name} must be true or false, got {short_repr(value)}")


def numbers(value: object, name: str) -> tuple[float, ...]:
    if not isinstance(value, list | tuple):
        raise bad_request(f"{name} must be a list of numbers")
    return tuple(number(v, f"{name}[{i}]") for i, v in enumerate(value))


def shape(value: object, name: str) -> dict[str, Any] | None:
    """A JSON object (MQTT, sidecars) or the same as a JSON string (HTTP forms)."""
    return parse_shape(value)  # type: ignore[arg-type]


def label(value: object, name: str) -> str:
    if value not in LABELS:
        raise bad_request(f"{name} must be 'ok' or 'ng', got {short_repr(value)}")
    return str(value)


def file_name(value: object, name: str) -> str:
    """A stored sample's bare file name: one path component, nothing hidden."""
    if not isinstance(value, str) or not value:
        raise bad_request(f"{name} must be the sample's file name")
    if (
        not is_text(value)
        or len(value.encode("utf-8")) > MAX_FILE_NAME_BYTES
        or value.startswith(".")
        or any(c in value for c in "/\\")
        or any(ord(c) < 32 for c in value)
    ):
        raise bad_request(f"{name} must be a sample's bare file name, got {value[:100]!r}")
    return value


def texts(value: object, name: str) -> tuple[str, ...]:
    if not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value):
        raise bad_request(f"{name} must be a list of strings")
    return tuple(value)


# -- the field types -------------------------------------------------------------------

Id = Annotated[str, rule(identifier)]  # role_id, roi_id, model_key: printable, <= 90 bytes
RecipeId = Annotated[str, rule(recipe_id)]
Scale = Annotated[float, rule(scale)]
Flag = Annotated[bool, rule(flag)]
Scores = Annotated[tuple[float, ...], rule(numbers)]
Shape = Annotated[dict[str, Any] | None, rule(shape)]
Label = Annotated[str, rule(label)]
FileName = Annotated[str, rule(file_name)]
Names = Annotated[tuple[str, ...], rule(texts)]
