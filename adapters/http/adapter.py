"""HTTP adapter (contract section 7): the FastAPI API the operators' GUI speaks.

Inside the agent process (``agent.adapters_wiring`` calls ``create``), uvicorn serves
``create_app(agent)`` from a background thread. Standalone, for the seeds' deployment
recipes (several workers sharing one data root)::

    uvicorn --factory adapters.http:create_standalone_app --workers 2
    uvicorn adapters.http:app            # the same, built on first access

Every route turns its input into a command and hands it to the bus; the engine is never
called from here. Failures of every kind, FastAPI's own included, leave as the contract's
error body ``{"error": {"code", "kind", "message"}, "request_id", "recipe_id"}``.
"""

from __future__ import annotations

import errno
import os
import socket
import threading
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import structlog
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from adapters.http.routes_common import ids_of
from adapters.http.routes_guard import ContractGuard, refused
from agent import __version__
from agent.config import Settings
from agent.errors import AgentError
from agent.startup import StartupRefused

if TYPE_CHECKING:
    from agent.bootstrap import Agent

log = structlog.get_logger("adapters.http")

KIND_BY_STATUS = {
    400: "bad_request",
    401: "unauthorized",
    404: "not_found",
    405: "method_not_allowed",
    413: "payload_too_large",
    503: "busy",
}

DESCRIPTION = """Edge inspection agent for brake-disc lines: PatchCore anomaly detection on
DINOv2. The GUI flow: upload OK samples (`/datasets/ok/upload` or `/fit_ok`), fit
(`/fit_ok`), score OK images (`/infer`), calibrate (`/calibrate_ng`), then inspect.

Every reply carries `request_id` (the `X-Request-Id` or `X-Correlation-Id` header, else a
new UUID, echoed in the `X-Request-Id` response header) and `recipe_id` (form or JSON
field, else `?recipe_id=`, else the `X-Recipe-Id` header). Every failure is
`{"error": {"code", "kind", "message"}, "request_id", "recipe_id"}` with status `code`.
When an API key is configured, every route but `/health` needs the `X-API-Key` header.
"""


# -- FastAPI's own failures, in the contract's body ---------------------------------------


async def _on_validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    message = _validation_message(exc)
    return refused(ids_of(request), request.url.path, 400, "bad_request", message)


async def _on_http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, HTTPException)
    code = exc.status_code
    kind = KIND_BY_STATUS.get(code) or ("internal" if code >= 500 else "bad_request")
    response = refused(ids_of(request), request.url.path, code, kind, str(exc.detail))
    if exc.headers:
        response.headers.update(exc.headers)
    return response


async def _on_agent_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, AgentError)
    return refused(ids_of(request), request.url.path, exc.code, exc.kind, exc.message)


def _validation_message(exc: RequestValidationError) -> str:
    """``mm_per_px: Input should be a valid number; images: Field required``."""
    parts = []
    for error in exc.errors():
        location = [str(part) for part in error.get("loc", ())]
        field = ".".join(location[1:]) if len(location) > 1 else ".".join(location)
        parts.append(f"{field or 'request'}: {error.get('msg', 'invalid')}")
    return "; ".join(parts)[:2000] or "invalid request"


# -- the app -------------------------------------------------------------------------------


def create_app(agent: Agent, lifespan: Any = None) -> FastAPI:
    """The API over ``agent``'s bus. Nothing starts here; serve it with uvicorn."""
    from adapters.http import (
        routes_console,
        routes_datasets,
        routes_events,
        routes_inspect,
        routes_status,
    )

    app = FastAPI(
        title="BrakeDisc Inspector edge agent",
        version=__version__,
        description=DESCRIPTION,
        docs_url="/docs",
        redoc_url=None,
        lifespan=lifespan,
    )
    app.state.agent = agent
    app.state.last_fit = routes_status.LastFit(agent)
    agent.services.roi_listeners.append(app.state.last_fit)
    for module in (routes_status, routes_inspect, routes_datasets, routes_events, routes_console):
        app.include_router(module.router)
    app.add_exception_handler(RequestValidationError, _on_validation_error)
    app.add_exception_handler(HTTPException, _on_http_error)
    app.add_exception_handler(AgentError, _on_agent_error)
    settings = agent.settings
    app.add_middleware(ContractGuard, settings=settings)
    # Outermost: a browser's preflight is answered before the API key is asked for, and
    # error replies carry the CORS headers the browser needs to read them.
    app.add_middleware(
        CORSMiddleware,
        allow_origins=settings.http.cors_origins,
        allow_methods=["*"],
        allow_headers=["*"],
        expose_headers=["X-Request-Id"],
    )
    _contract_openapi(app)
    return app


def _contract_openapi(app: FastAPI) -> None:
    """The OpenAPI document as the API behaves: the X-API-Key scheme (enforced by the
    guard) so /docs can send it, and no 422 (validation errors leave as the 400 body)."""
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = build()
            for path in schema.get("paths", {}).values():
                for operation in path.values():
                    operation.get("responses", {}).pop("422", None)
            components = schema.setdefault("components", {})
            for name in ("HTTPValidationError", "ValidationError"):
                components.get("schemas", {}).pop(name, None)
            schemes = components.setdefault("securitySchemes", {})
            schemes["ApiKey"] = {"type": "apiKey", "in": "header", "name": "X-API-Key"}
            schema["security"] = [{"ApiKey": []}, {}]
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


# -- inside the agent process -------------------------------------------------------------


class HttpAdapter:
    """Serves ``create_app(agent)`` with uvicorn from a background thread."""

    def __init__(self, settings: Settings, agent: Agent) -> None:
        self.settings = settings
        # Bound now, when the agent is built: a taken port stops start-up before any
        # adapter connects (raises StartupRefused).
        self._sock: socket.socket | None = _bind(settings.http.host, settings.http.port)
        self.port: int = self._sock.getsockname()[1]  # the bound port (useful with port 0)
        self.app = create_app(agent)
        self._server: Any = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host = self.settings.http.host
        host = "127.0.0.1" if host in ("0.0.0.0", "") else host
        return f"http://[{host}]:{self.port}" if ":" in host else f"http://{host}:{self.port}"

    def start(self, timeout: float = 30.0) -> None:
        import uvicorn

        http = self.settings.http
        sock, self._sock = self._sock, None
        if sock is None:
            raise RuntimeError("the HTTP adapter was stopped; build a new one to serve again")
        config = uvicorn.Config(
            self.app,
            log_config=None,
            access_log=False,  # the guard and the worker log each request with its ids
            lifespan="off",  # the agent's life is the agent's: Agent.start/stop
            timeout_graceful_shutdown=5,
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(
            target=self._server.run, kwargs={"sockets": [sock]}, name="http", daemon=True
        )
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"HTTP adapter did not start on {http.host}:{self.port}")
            time.sleep(0.01)
        log.info("http adapter listening", host=http.host, port=self.port)

    def stop(self, timeout: float = 10.0) -> None:
        if self._sock is not None:  # built but never started
            self._sock.close()
            self._sock = None
        if self._server is not None:
            from adapters.http.routes_events import close_streams

            close_streams(self.app)  # an open event stream would hold the exit for its grace
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None


def _bind(host: str, port: int) -> socket.socket:
    """Bind here rather than in uvicorn, which exits the process on a busy port; a port
    that cannot be had is one clear line (``StartupRefused``), not a traceback.

    ``IPPROTO_TCP`` explicitly: asyncio sets TCP_NODELAY only on sockets that say so, and
    without it every small reply waits out the client's 40 ms delayed ACK (Nagle).
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise StartupRefused(
                f"HTTP port {port} on {host} is taken ({exc.strerror}): stop what uses it, "
                "or give the agent another port (BDI_HTTP__PORT, http.port in the config)"
            ) from None
        raise StartupRefused(
            f"HTTP cannot listen on {host}:{port} ({exc.strerror}): check BDI_HTTP__HOST "
            "and BDI_HTTP__PORT (http.host, http.port in the config)"
        ) from None
    return sock


def create(settings: Settings, agent: Agent) -> HttpAdapter:
    """The adapter ``agent.adapters_wiring`` builds when ``http.enabled``."""
    return HttpAdapter(settings, agent)


# -- standalone: uvicorn adapters.http:app / --factory adapters.http:create_standalone_app --


def create_standalone_app() -> FastAPI:
    """An agent of its own (settings from the environment) behind the API.

    Only the HTTP adapter runs: with several uvicorn workers, each is a full agent on
    the shared data root, and MQTT or folder watching in every worker would compete.
    The model loads in the background; ``/health`` answers 503 until it is ready.
    """
    from agent.bootstrap import bootstrap
    from agent.config import load_settings
    from agent.logging import configure_logging
    from agent.root_lock import hold_shared

    settings = load_settings()
    configure_logging(settings.log_level)
    root_lock = hold_shared(settings.data_root)  # each worker, like any agent on the root
    agent = bootstrap(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        _nodelay_on_inherited_listeners()
        agent.start(load_model=True)
        log.info("standalone http agent started", data_root=str(settings.data_root))
        try:
            yield
        finally:
            agent.stop()
            root_lock.release()

    return create_app(agent, lifespan=lifespan)


def _nodelay_on_inherited_listeners() -> None:
    """TCP_NODELAY on the listening socket a ``--workers`` parent handed this process.

    uvicorn's parent creates that socket without ``IPPROTO_TCP``, so asyncio leaves Nagle
    on for every connection, and each reply then waits out the client's 40 ms delayed
    ACK. Accepted sockets inherit the option from the listener (Linux), so setting it
    once here fixes every connection. Without ``/proc`` (not Linux) nothing is done.
    """
    fd_dir = Path("/proc/self/fd")
    if not fd_dir.is_dir():
        return
    for name in os.listdir(fd_dir):
        try:
            sock = socket.socket(fileno=int(name))
        except (OSError, ValueError):
            continue  # not a socket
        try:
            if _unconnected_tcp(sock):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            pass
        finally:
            sock.detach()  # the fd belongs to uvicorn


def _unconnected_tcp(sock: socket.socket) -> bool:
    if sock.family not in (socket.AF_INET, socket.AF_INET6) or sock.type != socket.SOCK_STREAM:
        return False
    try:
        sock.getpeername()
    except OSError:
        return sock.getsockname()[1] != 0  # bound, not connected: a listener
    return False


_standalone: FastAPI | None = None


def __getattr__(name: str) -> FastAPI:
    """``adapters.http.app``, built on first access, never at import."""
    global _standalone
    if name != "app":
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    if _standalone is None:
        _standalone = create_standalone_app()
    return _standalone
