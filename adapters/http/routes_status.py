"""Routes that report on the agent: ``/``, health, train status, stats, Prometheus metrics.

None of them waits behind a fit in the work queue: ``health`` is answered by the bus at
once, and the rest read counters.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any

import structlog
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST

from adapters.http.routes_common import COMMON_ERRORS, BridgeDep, ContractJSON, error_response
from adapters.http.schemas import ErrorOut, HealthOut, RootOut, StatsOut, TrainStatusOut
from agent import __version__

if TYPE_CHECKING:
    from agent.bootstrap import Agent
    from engine.keys import RoiKey

log = structlog.get_logger("adapters.http")

router = APIRouter(tags=["status"])

PACKAGE_NAME = "brakedisc-inspector-agent"


class LastFit:
    """The coreset size of the ROI whose memory changed last in this process, for
    ``/train/status``. Fed by the agent's ROI-change hook, on the worker thread."""

    def __init__(self, agent: Agent) -> None:
        self._agent = agent
        self._lock = threading.Lock()
        self.coreset_size: int | None = None

    def __call__(self, key: RoiKey) -> None:
        try:
            state = self._agent.services.roi_state(key)
        except Exception:  # a status counter must never fail the fit that fed it
            log.exception("roi state unreadable", role_id=key.role_id, roi_id=key.roi_id)
            return
        with self._lock:
            self.coreset_size = state.get("coreset_size")


@router.get("/", response_model=RootOut)
async def root() -> dict[str, Any]:
    return {"name": PACKAGE_NAME, "version": __version__, "docs": "/docs"}


@router.get(
    "/health",
    response_model=HealthOut,
    responses={503: {"model": HealthOut, "description": "model not loaded; see reason"}},
)
async def health(bridge: BridgeDep) -> JSONResponse:
    """Readiness: 200 when the model is loaded, else 503 with the reason (no API key)."""
    reply = await bridge.submit("health", {})
    if reply.error is None:
        return ContractJSON(reply.to_dict())
    # Still the health body, so the GUI's status bar can show status and reason.
    return ContractJSON({**(reply.body or {}), **reply.to_dict()}, status_code=reply.error.code)


@router.get("/train/status", response_model=TrainStatusOut, responses=COMMON_ERRORS)
async def train_status(request: Request, bridge: BridgeDep) -> JSONResponse:
    """Seed 001's training status: a fit, refit or calibration running in this agent or
    waiting in its queue (``running``: the command now, ``queued``: how many wait)."""
    reply = await bridge.submit("health", {})
    health = reply.body or {}
    agent = bridge.agent
    last_fit: LastFit = request.app.state.last_fit
    body = {
        **agent.bus.training(),
        "queue_size": health.get("queue_size", agent.worker.queue_size),
        "model": health.get("model"),
        "device": health.get("device"),
        "coreset_size": last_fit.coreset_size,
        "request_id": bridge.ids.request_id,
        "recipe_id": bridge.ids.recipe_id,
    }
    return ContractJSON(body)


@router.get("/stats", response_model=StatsOut, responses=COMMON_ERRORS)
async def stats(bridge: BridgeDep) -> JSONResponse:
    """The MQTT stats topic's body: queue, infer p50/p95, counts by outcome and source."""
    return ContractJSON(bridge.agent.bus.stats_body())


@router.get(
    "/metrics",
    response_class=Response,
    responses={
        200: {"content": {CONTENT_TYPE_LATEST: {}}, "description": "Prometheus text format"},
        404: {"model": ErrorOut, "description": "metrics are turned off"},
        **COMMON_ERRORS,
    },
)
async def metrics(bridge: BridgeDep) -> Response:
    """Prometheus metrics of this agent (its own registry)."""
    if not bridge.agent.settings.http.enable_metrics:
        return error_response(bridge.ids, 404, "not_found", "metrics are turned off")
    return Response(bridge.agent.bus.metrics.render(), media_type=CONTENT_TYPE_LATEST)
