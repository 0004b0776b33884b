"""The middleware every HTTP route sits behind: request ids, the API key, body limits,
and the last word on crashes, all answered with the contract's error body.

Pure ASGI rather than FastAPI dependencies, so it sees the raw request before anything
reads the body: a refused request costs its headers only.
"""

from __future__ import annotations

import hmac
import uuid

import structlog
from fastapi.responses import JSONResponse
from starlette.datastructures import Headers, QueryParams
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from adapters.http.routes_common import (
    MAX_ID_LENGTH,
    STATE_KEY,
    RequestIds,
    error_response,
    safe_recipe_id,
)
from adapters.http.routes_console import CONSOLE_PATHS
from agent.config import Settings

log = structlog.get_logger("adapters.http")

# Reachable without X-API-Key: readiness probes, and the API's own documentation (the
# browser that opens /docs cannot add the header; the document holds no data).
PUBLIC_PATHS = frozenset({"/health", "/docs", "/docs/oauth2-redirect", "/openapi.json"})
# Routes that take one image: their body may hold that image plus small form fields.
SINGLE_IMAGE_PATHS = frozenset({"/infer", "/predict"})
FORM_OVERHEAD_BYTES = 1024 * 1024


class BodyTooLarge(Exception):
    """Raised from ``receive`` when a streamed body passes its limit."""


class BodyCounter:
    """Wraps ``receive``; counts body bytes as they arrive, so a body sent without
    ``Content-Length`` (chunked) is cut off at the limit, not read to its end."""

    def __init__(self, receive: Receive, limit: int) -> None:
        self._receive = receive
        self.limit = limit
        self.seen = 0
        self.exceeded = False

    async def receive(self) -> Message:
        message = await self._receive()
        if message["type"] == "http.request":
            self.seen += len(message.get("body", b""))
            if self.seen > self.limit:
                self.exceeded = True
                raise BodyTooLarge
        return message


class ContractGuard:
    """Pure ASGI middleware, so it sees the raw request before anything reads the body."""

    def __init__(self, app: ASGIApp, settings: Settings) -> None:
        self.app = app
        self.api_key = (settings.api_key or "").encode("utf-8")
        self.max_body = settings.http.max_body_bytes
        self.max_single = min(self.max_body, settings.max_image_bytes + FORM_OVERHEAD_BYTES)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        ids = RequestIds(_request_id(headers), _recipe_hint(scope, headers))
        scope.setdefault("state", {})[STATE_KEY] = ids
        send = _echo_request_id(send, ids)
        # Bound for the log lines of whatever runs for this request (crash traces too).
        with structlog.contextvars.bound_contextvars(request_id=ids.request_id, source="http"):
            refusal = self._refusal(scope, headers, ids)
            if refusal is not None:
                await refusal(scope, receive, send)
            else:
                await self._forward(scope, receive, send, ids)

    def _limit(self, path: str) -> int:
        return self.max_single if path in SINGLE_IMAGE_PATHS else self.max_body

    def _refusal(self, scope: Scope, headers: Headers, ids: RequestIds) -> JSONResponse | None:
        """401 or 413 decided from the headers alone, before any body byte is read."""
        path = scope["path"]
        # The console's page and files are public too: it must load to ask for the key.
        public = path in PUBLIC_PATHS or path in CONSOLE_PATHS
        if self.api_key and not public and not self._key_ok(scope):
            return refused(ids, path, 401, "unauthorized", "X-API-Key is missing or wrong")
        declared = _content_length(headers)
        limit = self._limit(path)
        if declared is not None and declared > limit:
            return _too_large(ids, path, declared, limit)
        return None

    def _key_ok(self, scope: Scope) -> bool:
        given = next((v for k, v in scope["headers"] if k == b"x-api-key"), b"")
        return hmac.compare_digest(given, self.api_key)

    async def _forward(self, scope: Scope, receive: Receive, send: Send, ids: RequestIds) -> None:
        counter = BodyCounter(receive, self._limit(scope["path"]))
        started = replaced = False

        def too_large() -> JSONResponse:
            return _too_large(ids, scope["path"], counter.seen, counter.limit)

        async def guarded_send(message: Message) -> None:
            # Whatever the app made of the cut-off body (FastAPI calls it a parse error),
            # the client is told the body was too large.
            nonlocal started, replaced
            if replaced:
                return
            if message["type"] == "http.response.start":
                started = True
                if counter.exceeded:
                    replaced = True
                    await too_large()(scope, receive, send)
                    return
            await send(message)

        try:
            await self.app(scope, counter.receive, guarded_send)
        except BodyTooLarge:
            if not started:
                await too_large()(scope, receive, send)
        except Exception:
            # The trace goes to the log only; the client gets the contract's 500 body.
            log.exception(
                "unhandled error",
                method=scope["method"],
                path=scope["path"],
                request_id=ids.request_id,
            )
            if not started:
                message = "internal error; see the agent log for this request_id"
                await error_response(ids, 500, "internal", message)(scope, receive, send)


def _too_large(ids: RequestIds, path: str, size: int, limit: int) -> JSONResponse:
    message = f"request body of {size} bytes or more is over the {limit}-byte limit"
    return refused(ids, path, 413, "payload_too_large", message)


def _request_id(headers: Headers) -> str:
    for name in ("x-request-id", "x-correlation-id"):
        value = headers.get(name, "").strip()
        if 0 < len(value) <= MAX_ID_LENGTH:
            return value
    return str(uuid.uuid4())


def _recipe_hint(scope: Scope, headers: Headers) -> str:
    """The recipe id a reply carries until a route reads its fields."""
    query = QueryParams(scope.get("query_string", b""))
    return safe_recipe_id(query.get("recipe_id") or headers.get("x-recipe-id"))


def _content_length(headers: Headers) -> int | None:
    try:
        return int(headers["content-length"])
    except (KeyError, ValueError):
        return None


def _echo_request_id(send: Send, ids: RequestIds) -> Send:
    async def echo(message: Message) -> None:
        if message["type"] == "http.response.start":
            value = ids.request_id.encode("latin-1", "replace")
            message["headers"] = [*message.get("headers", []), (b"x-request-id", value)]
        await send(message)

    return echo


def refused(ids: RequestIds, path: str, code: int, kind: str, message: str) -> JSONResponse:
    """A refusal decided here, before any command reached the bus (whose worker logs the
    rest): logged, since nothing else would."""
    log.warning(
        "http request refused",
        path=path,
        status=code,
        kind=kind,
        error=message,
        request_id=ids.request_id,
        recipe_id=ids.recipe_id,
        source="http",
    )
    return error_response(ids, code, kind, message)
