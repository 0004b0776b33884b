"""What every HTTP route shares: the request's ids, the bus round trip, contract replies.

A route turns its form, query or JSON into the payload dict of ``agent.parsing``, so the
HTTP adapter refuses exactly what MQTT and folders refuse, with the same messages.
"""

from __future__ import annotations

import asyncio
import math
from dataclasses import dataclass
from pathlib import PurePath
from typing import TYPE_CHECKING, Annotated, Any

from fastapi import Depends, Header, Query, Request, UploadFile
from fastapi.responses import JSONResponse

from adapters.http.schemas import ErrorOut
from agent.errors import AgentError
from agent.parsing import parse_command
from agent.replies import Reply
from engine.errors import EngineError
from engine.keys import normalise_recipe_id

if TYPE_CHECKING:
    from agent.bootstrap import Agent

STATE_KEY = "bdi"  # scope["state"][STATE_KEY] holds the RequestIds of one request
MAX_ID_LENGTH = 200  # agent.parsing ignores longer request ids

# Every route can fail in these ways; each route adds its own (409, 428, ...).
COMMON_ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorOut, "description": "bad_request (a field is missing or invalid)"},
    401: {"model": ErrorOut, "description": "unauthorized (X-API-Key missing or wrong)"},
    500: {"model": ErrorOut, "description": "internal (the agent log has the trace)"},
    503: {"model": ErrorOut, "description": "busy (queue full, or the model is not loaded)"},
}
UPLOAD_ERRORS: dict[int | str, dict[str, Any]] = {
    **COMMON_ERRORS,
    409: {"model": ErrorOut, "description": "scale_mismatch (mm_per_px differs by > 1 %)"},
    413: {"model": ErrorOut, "description": "payload_too_large (body or an image)"},
}


class ContractJSON(JSONResponse):
    """JSON that never fails to render: a non-finite number (an absurd calibration input
    can overflow a mean) becomes null rather than a 500."""

    def render(self, content: Any) -> bytes:
        try:
            return super().render(content)
        except ValueError:
            return super().render(_finite(content))


def _finite(value: Any) -> Any:
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: _finite(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(item) for item in value]
    return value


@dataclass
class RequestIds:
    """The ids a reply carries. The guard middleware sets them before any route runs (so a
    401 or 413 has them too); a route refines ``recipe_id`` once its fields are read."""

    request_id: str
    recipe_id: str


def ids_of(request: Request) -> RequestIds:
    ids = request.scope.get("state", {}).get(STATE_KEY)
    return ids if isinstance(ids, RequestIds) else RequestIds("", "default")


def safe_recipe_id(raw: str | None) -> str:
    """The recipe id to echo in a reply; never raises (a refused one is echoed cleaned)."""
    try:
        return normalise_recipe_id(raw)
    except EngineError:
        return str(raw).strip().lower()[:80]


def error_body(ids: RequestIds, code: int, kind: str, message: str) -> dict[str, Any]:
    error = {"code": code, "kind": kind, "message": message}
    return {"error": error, "request_id": ids.request_id, "recipe_id": ids.recipe_id}


def error_response(ids: RequestIds, code: int, kind: str, message: str) -> JSONResponse:
    return ContractJSON(error_body(ids, code, kind, message), status_code=code)


@dataclass
class Bridge:
    """One request's way to the bus."""

    agent: Agent
    ids: RequestIds
    query_recipe_id: str | None
    header_recipe_id: str | None

    async def submit(self, name: str, payload: dict[str, Any]) -> Reply:
        """Parse ``payload`` as command ``name`` and wait for the bus's reply.

        ``recipe_id`` comes from the payload (form or JSON field), else the query, else the
        ``X-Recipe-Id`` header. Raises ``AgentError`` when the payload is refused.
        """
        recipe = payload.get("recipe_id") or self.query_recipe_id or self.header_recipe_id
        self.ids.recipe_id = safe_recipe_id(recipe)
        full = {**payload, "recipe_id": recipe, "request_id": self.ids.request_id}
        command = parse_command(name, full, "http", defaults=self.agent.services.defaults_for)
        return await asyncio.wrap_future(self.agent.bus.submit(command))

    async def read_images(self, files: list[UploadFile], name: str) -> list[bytes]:
        """The uploaded images' bytes; one over the per-image limit is refused before it is
        read (the multipart parser has spooled it to a temporary file)."""
        limit = self.agent.settings.max_image_bytes
        for i, upload in enumerate(files):
            if upload.size is not None and upload.size > limit:
                raise AgentError(
                    "payload_too_large",
                    f"{name}[{i}] is {upload.size} bytes, over the {limit}-byte image limit",
                )
        return [await upload.read() for upload in files]


def get_bridge(
    request: Request,
    recipe_id: Annotated[
        str | None, Query(description="product variant (a form or JSON field wins)")
    ] = None,
    x_recipe_id: Annotated[
        str | None, Header(description="product variant, when no field gives it")
    ] = None,
    x_request_id: Annotated[
        str | None, Header(description="echoed as request_id and in the response header")
    ] = None,
) -> Bridge:
    # x_request_id is declared for the OpenAPI document; the guard middleware reads it.
    agent: Agent = request.app.state.agent
    return Bridge(agent, ids_of(request), recipe_id, x_recipe_id)


BridgeDep = Annotated[Bridge, Depends(get_bridge)]


def reply_response(reply: Reply, body: dict[str, Any] | None = None) -> JSONResponse:
    """The contract body of ``reply``: its result (or ``body``, a reshaped result) with
    status 200, or its error with the error's status code."""
    if reply.error is not None:
        return ContractJSON(reply.to_dict(), status_code=reply.error.code)
    return ContractJSON(reply.to_dict() if body is None else body)


def with_target_dir(body: dict[str, Any]) -> dict[str, Any]:
    """Seed 001's ``target_dir``: the folder the samples went to."""
    samples = body.get("samples") or []
    if samples and isinstance(samples[0], dict) and "file" in samples[0]:
        body["target_dir"] = str(PurePath(str(samples[0]["file"])).parent)
    return body
