"""Wire payloads (dicts from MQTT JSON, HTTP forms, sidecars) -> typed commands.

One place decides what a valid field is, so every adapter refuses the same input with
the same message: the request model of each command (``agent.requests``) validates the
payload, and the first thing wrong with it becomes the refusal, naming the field.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from agent.commands import COMMANDS, Command
from agent.errors import STATUS_BY_KIND, AgentError, bad_request
from agent.requests import MAX_BATCH_ITEMS, REQUESTS, DefaultsLookup, ParseContext
from agent.requests.rules import MAX_FILE_NAME_BYTES, MAX_MM_PER_PX, readable_request_id
from engine.errors import EngineError
from engine.keys import normalise_recipe_id

MAX_PROBLEMS = 10  # in one refusal's message
MISSING_HINTS = {
    "mm_per_px": "give it with the command, or as the ROI's default in configs/rois.yaml",
    "label": "'ok' or 'ng'",
}

__all__ = [
    "MAX_BATCH_ITEMS",
    "MAX_FILE_NAME_BYTES",
    "MAX_MM_PER_PX",
    "parse_command",
    "recipe_id_of",
    "request_id_of",
]


def request_id_of(payload: Mapping[str, Any] | None) -> str | None:
    """The caller's request id if one can be read, for error replies to bad messages."""
    if not isinstance(payload, Mapping):
        return None
    return readable_request_id(payload.get("request_id"))


def recipe_id_of(payload: Mapping[str, Any] | None) -> str:
    """The payload's recipe id, normalised, for error replies to bad messages; "default"
    when there is none or it is refused."""
    value = payload.get("recipe_id") if isinstance(payload, Mapping) else None
    try:
        return normalise_recipe_id(value if isinstance(value, str) else None)
    except EngineError:
        return "default"


def parse_command(
    name: str,
    payload: Mapping[str, Any],
    source: str,
    image_roots: Sequence[Path] = (),
    deadline: float | None = None,
    max_image_bytes: int | None = None,
    defaults: DefaultsLookup | None = None,
) -> Command:
    """Raises ``AgentError`` (bad_request / payload_too_large) naming the bad field.

    ``image_roots``: where ``image_path`` may read; ``max_image_bytes``: a file there
    over this size is refused before it is read; ``defaults``: the ROI's defaults
    (``Services.defaults_for``), which give ``mm_per_px`` when the payload has none."""
    model = REQUESTS.get(name)
    if model is None:
        raise bad_request(f"unknown command {name!r}; one of {sorted(COMMANDS)}")
    if not isinstance(payload, Mapping):
        raise bad_request("the payload must be a JSON object")
    context = ParseContext(tuple(image_roots), max_image_bytes, defaults)
    try:
        request = model.model_validate(payload, context=context)
    except ValidationError as exc:
        raise _refusal(exc) from None
    except EngineError as exc:
        raise AgentError.from_exception(exc) from None
    return request.to_command(source, deadline)


def _refusal(exc: ValidationError) -> AgentError:
    """Every field's problem, in field order, in one message; the first one's kind. The
    rules' own refusals keep their kind and message (which names the field); pydantic's
    (a missing field) name the field here."""
    errors = exc.errors(include_url=False, include_context=False, include_input=False)
    kinds = [error["type"] for error in errors if error["type"] in STATUS_BY_KIND]
    problems = list(dict.fromkeys(_problem(error) for error in errors))
    if len(problems) > MAX_PROBLEMS:
        problems = [*problems[:MAX_PROBLEMS], f"and {len(problems) - MAX_PROBLEMS} more"]
    return AgentError(kinds[0] if kinds else "bad_request", "; ".join(problems))


def _problem(error: Any) -> str:
    loc = tuple(error["loc"])
    if error["type"] in STATUS_BY_KIND:
        # Inside a batch item, say which: ("items", 0, "mm_per_px") -> "items[0]: ...".
        container = _location(loc[:-1] if loc and isinstance(loc[-1], str) else loc)
        return f"{container}: {error['msg']}" if container else str(error["msg"])
    if error["type"] == "missing":
        name = _location(loc)
        hint = MISSING_HINTS.get(str(loc[-1]) if loc else "")
        return f"{name} is required: {hint}" if hint else f"{name} is required"
    return f"{_location(loc) or 'payload'}: {error['msg']}"


def _location(loc: tuple[int | str, ...]) -> str:
    """``("items", 0, "mm_per_px")`` -> ``items[0].mm_per_px``."""
    text = ""
    for part in loc:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text
