"""The core's events and what they are about, for browsers and dashboards (contract
section 9): ``GET /events`` (Server-Sent Events), ``GET /recent`` with the pictures of
each recent verdict, and ``GET /rois`` (every ROI's state).

The events listener runs on the agent's delivery thread: it only hands each event to the
client's asyncio loop (``call_soon_threadsafe``), never waits. Each client has a bounded
queue of its own: a client that reads slower than events come loses its oldest events
(and is told so), never holds memory without bound or slows anyone else.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections import deque
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Annotated, Any

from fastapi import APIRouter, Header, Path, Query, Request
from fastapi.responses import JSONResponse, Response
from fastapi.sse import EventSourceResponse, ServerSentEvent
from pydantic import Field

from adapters.http.routes_common import (
    COMMON_ERRORS,
    ContractJSON,
    error_response,
    ids_of,
    safe_recipe_id,
)
from adapters.http.schemas import ErrorOut, Ids, Wire
from agent.events import Event, Events

if TYPE_CHECKING:
    from agent.bootstrap import Agent

router = APIRouter(tags=["events"])

CLIENT_QUEUE = 512  # events a client may lag behind before it loses the oldest
RETRY_MS = 3000  # how long an EventSource waits before it reconnects

EVENTS_DESCRIPTION = """The core's events as Server-Sent Events: `verdict`, `alert`, `state`
and `health` (contract section 9), each as `event:` the name, `id:` its `seq`, `data:` the
body (one line of JSON). The stream never ends; a comment (`: ping`) every 15 s keeps
proxies from closing it.

- The first frame is `retry: 3000` with a comment (`: connected, boot B, last seq N, agent A`):
  once a client reads it, it is subscribed, and no later event can pass it by. `B` changes
  when the agent restarts (and `seq` begins again).
- Without `Last-Event-ID`, the stream starts with the next event. With it (the header,
  which `EventSource` sends itself when it reconnects, or `?last_event_id=` for clients that
  cannot set headers; the header wins), the events after that `seq` still held in the agent's
  bounded backlog come first.
- When the client cannot get everything back, an event `missed` (no `id:`) says so before
  the events that follow, `data: {"reason", "after", "dropped"}`:
  `reason` is `backlog` (events after `after` were already evicted from the backlog),
  `restart` (the agent restarted since that id: `seq` began again, and the whole backlog
  of this run follows), or `slow_client` (this client read too slowly and its `dropped`
  oldest events were discarded). After a `missed`, reload what you show (`GET /recent`,
  `GET /rois`).
- `role_id`, `roi_id`, `recipe_id` keep only the events about that ROI, role or recipe;
  `health` events concern every ROI and always pass.

Browsers: `EventSource` cannot send `X-API-Key`; with an API key configured, read the
stream with `fetch()` (the operators' console at `/ui/` does).
"""

RoleFilter = Annotated[str | None, Query(description="only events of this role_id")]
RoiFilter = Annotated[str | None, Query(description="only events of this roi_id")]
RecipeFilter = Annotated[str | None, Query(description="only events of this recipe_id")]


def _filters(role_id: str | None, roi_id: str | None, recipe_id: str | None) -> dict[str, str]:
    given = {"role_id": role_id, "roi_id": roi_id, "recipe_id": recipe_id}
    filters = {name: value for name, value in given.items() if value is not None}
    if "recipe_id" in filters:  # bodies carry the normalised id
        filters["recipe_id"] = safe_recipe_id(filters["recipe_id"])
    return filters


# -- one client's subscription ------------------------------------------------------------


class ClientQueue:
    """The events one client has still to read, handed over from the delivery thread."""

    def __init__(self, loop: asyncio.AbstractEventLoop, filters: dict[str, str]) -> None:
        self._loop = loop
        self._filters = filters
        self._pending: deque[Event] = deque()
        self._ready = asyncio.Event()
        self._closed = False
        self.dropped = 0  # events discarded since the client was last told

    def offer(self, event: Event) -> None:
        """The events listener, on the delivery thread: never blocks."""
        if event.matches(self._filters):
            with contextlib.suppress(RuntimeError):  # the loop is closed: server stopped
                self._loop.call_soon_threadsafe(self._put, event)

    def close(self) -> None:
        """End the stream (from any thread)."""
        with contextlib.suppress(RuntimeError):
            self._loop.call_soon_threadsafe(self._end)

    def _put(self, event: Event) -> None:
        if len(self._pending) >= CLIENT_QUEUE:
            self._pending.popleft()
            self.dropped += 1
        self._pending.append(event)
        self._ready.set()

    def _end(self) -> None:
        self._closed = True
        self._ready.set()

    async def next(self) -> Event | None:
        """The next event, waiting for it; None once the stream is closed."""
        while not self._pending:
            if self._closed:
                return None
            self._ready.clear()
            await self._ready.wait()
        return self._pending.popleft()


class EventStreams:
    """The open ``/events`` streams of one app, so a stopping server can end them at once
    (an open stream would otherwise hold the shutdown for its grace period)."""

    def __init__(self) -> None:
        self._open: set[ClientQueue] = set()
        self._lock = threading.Lock()
        self._closing = False  # the server stops: a stream opened now ends at once

    def __len__(self) -> int:
        return len(self._open)

    def add(self, queue: ClientQueue) -> None:
        with self._lock:
            self._open.add(queue)
            if self._closing:
                queue.close()

    def discard(self, queue: ClientQueue) -> None:
        with self._lock:
            self._open.discard(queue)

    def close_all(self) -> None:
        with self._lock:
            self._closing = True
            queues = list(self._open)
        for queue in queues:
            queue.close()


def streams_of(request: Request) -> EventStreams:
    state = request.app.state
    if not hasattr(state, "event_streams"):
        state.event_streams = EventStreams()
    streams: EventStreams = state.event_streams
    return streams


def close_streams(app: Any) -> None:
    """End every open ``/events`` stream of ``app`` (the HTTP adapter calls this on stop)."""
    streams = getattr(app.state, "event_streams", None)
    if streams is not None:
        streams.close_all()


# -- GET /events --------------------------------------------------------------------------


def _frame(event: Event) -> ServerSentEvent:
    return ServerSentEvent(event=event.name, id=str(event.seq), raw_data=event.data)


def _missed(reason: str, after: int | None, dropped: int | None = None) -> ServerSentEvent:
    return ServerSentEvent(
        event="missed", data={"reason": reason, "after": after, "dropped": dropped}
    )


def _resume(events: Events, after: int) -> tuple[list[Event], ServerSentEvent | None, int]:
    """The backlog after ``after``, the ``missed`` notice the client needs first, and the
    last seq the client will then have had."""
    if after > events.last_seq:  # an id of an earlier agent run: seq began again
        backlog, _ = events.since(0)
        notice: ServerSentEvent | None = _missed("restart", after)
        after = 0
    else:
        backlog, missed = events.since(after)
        notice = _missed("backlog", after) if missed else None
    return backlog, notice, backlog[-1].seq if backlog else after


def _json_error(description: str) -> dict[str, Any]:
    # Spelled out: with ``model`` FastAPI would document it as text/event-stream.
    schema = {"$ref": "#/components/schemas/ErrorOut"}
    return {"description": description, "content": {"application/json": {"schema": schema}}}


@router.get(
    "/events",
    response_class=EventSourceResponse,
    description=EVENTS_DESCRIPTION,
    responses={
        200: {"description": "the event stream (text/event-stream), endless"},
        400: _json_error("bad_request (a bad Last-Event-ID or last_event_id)"),
        401: _json_error("unauthorized (X-API-Key missing or wrong)"),
    },
)
async def events_stream(
    request: Request,
    role_id: RoleFilter = None,
    roi_id: RoiFilter = None,
    recipe_id: RecipeFilter = None,
    last_event_id: Annotated[
        int | None, Query(ge=0, description="resume after this seq (else Last-Event-ID)")
    ] = None,
    last_event_id_header: Annotated[
        int | None,
        Header(alias="Last-Event-ID", ge=0, description="resume after this seq"),
    ] = None,
) -> AsyncIterator[ServerSentEvent]:
    agent: Agent = request.app.state.agent
    events = agent.bus.events
    streams = streams_of(request)
    filters = _filters(role_id, roi_id, recipe_id)
    queue = ClientQueue(asyncio.get_running_loop(), filters)
    # Subscribed before the backlog is read: no event falls between the two (the
    # duplicates this allows are skipped by seq below).
    unsubscribe = events.subscribe(queue.offer)
    streams.add(queue)
    try:
        hello = (
            f"connected, boot {agent.bus.boot_id}, last seq {events.last_seq},"
            f" agent {agent.settings.agent_id}"
        )
        yield ServerSentEvent(retry=RETRY_MS, comment=hello)
        after = last_event_id_header if last_event_id_header is not None else last_event_id
        sent = 0  # the last seq this client has had (or filtered out)
        if after is not None:
            backlog, notice, sent = _resume(events, after)
            if notice is not None:
                yield notice
            for kept in backlog:
                if kept.matches(filters):
                    yield _frame(kept)
        while (event := await queue.next()) is not None:
            if queue.dropped:
                dropped, queue.dropped = queue.dropped, 0
                yield _missed("slow_client", sent, dropped)
            if event.seq > sent:
                sent = event.seq
                yield _frame(event)
    finally:
        unsubscribe()
        streams.discard(queue)


# -- GET /recent and its pictures --------------------------------------------------------


class RecentVerdictOut(Wire):
    seq: int
    role_id: str
    roi_id: str
    recipe_id: str
    score: float | None
    threshold: float | None
    is_anomaly: bool | None
    image_url: str = Field(description="path of the ROI image (PNG), from the API root")
    heatmap_url: str | None = Field(description="path of the heatmap (PNG); null when none")


class RecentOut(Ids):
    verdicts: list[RecentVerdictOut] = Field(description="newest first")


PICTURE_ERRORS: dict[int | str, dict[str, Any]] = {
    200: {"content": {"image/png": {}}, "description": "PNG"},
    404: {"model": ErrorOut, "description": "not_found (unknown or evicted seq, or no heatmap)"},
    **COMMON_ERRORS,
}
Seq = Annotated[int, Path(ge=0, description="the verdict's seq")]


@router.get("/recent", response_model=RecentOut, responses=COMMON_ERRORS)
async def recent(
    request: Request,
    role_id: RoleFilter = None,
    roi_id: RoiFilter = None,
    recipe_id: RecipeFilter = None,
) -> JSONResponse:
    """The last verdicts the agent kept with their pictures (`recent_max`, default 50),
    newest first: each `verdict` event body plus `image_url` and `heatmap_url`."""
    agent: Agent = request.app.state.agent
    filters = _filters(role_id, roi_id, recipe_id)
    root = request.scope.get("root_path", "").rstrip("/")
    verdicts = []
    for entry in agent.bus.recent.newest_first():
        if not all(entry.verdict.get(k, v) == v for k, v in filters.items()):
            continue
        base = f"{root}/recent/{entry.seq}"
        verdicts.append(
            {
                **entry.verdict,
                "seq": entry.seq,
                "image_url": f"{base}/image.png",
                "heatmap_url": f"{base}/heatmap.png" if entry.heatmap_png else None,
            }
        )
    ids = ids_of(request)
    return ContractJSON(
        {"verdicts": verdicts, "request_id": ids.request_id, "recipe_id": ids.recipe_id}
    )


def _picture(request: Request, seq: int, heatmap: bool) -> Response:
    agent: Agent = request.app.state.agent
    entry = agent.bus.recent.get(seq)
    ids = ids_of(request)
    if entry is None:
        kept = agent.bus.recent.max_items
        message = f"no recent verdict {seq}: unknown, or evicted (the last {kept} are kept)"
        return error_response(ids, 404, "not_found", message)
    data = entry.heatmap_png if heatmap else entry.image_png
    if data is None:
        return error_response(ids, 404, "not_found", f"verdict {seq} has no heatmap")
    # A seq names another picture after a restart: never cached.
    return Response(data, media_type="image/png", headers={"Cache-Control": "no-store"})


@router.get("/recent/{seq}/image.png", response_class=Response, responses=PICTURE_ERRORS)
async def recent_image(request: Request, seq: Seq) -> Response:
    """The ROI image of a recent verdict, as received (long side at most 512 px)."""
    return _picture(request, seq, heatmap=False)


@router.get("/recent/{seq}/heatmap.png", response_class=Response, responses=PICTURE_ERRORS)
async def recent_heatmap(request: Request, seq: Seq) -> Response:
    """The heatmap of a recent verdict (grayscale; 128 is the threshold)."""
    return _picture(request, seq, heatmap=True)


# -- GET /rois ----------------------------------------------------------------------------


class RoiStateOut(Wire):
    recipe_id: str
    model_key: str
    role_id: str
    roi_id: str
    fitted: bool
    coreset_size: int | None
    calibrated: bool
    threshold: float | None
    model_version: str | None


class RoisOut(Ids):
    rois: list[RoiStateOut]


@router.get("/rois", response_model=RoisOut, responses=COMMON_ERRORS)
def rois(request: Request, recipe_id: RecipeFilter = None) -> JSONResponse:
    """Every ROI with a memory, with its `state` (the MQTT `state` topic's body plus its
    ids), sorted by recipe, model key, role and ROI."""
    # A plain function: FastAPI runs it in its thread pool, as it reads memories from disk.
    agent: Agent = request.app.state.agent
    services = agent.services
    wanted = _filters(None, None, recipe_id).get("recipe_id")
    keys = sorted(
        services.models.roi_keys(), key=lambda k: (k.recipe_id, k.model_key, k.role_id, k.roi_id)
    )
    items = [
        {
            "recipe_id": key.recipe_id,
            "model_key": key.model_key,
            "role_id": key.role_id,
            "roi_id": key.roi_id,
            **services.roi_state(key),
        }
        for key in keys
        if wanted is None or key.recipe_id == wanted
    ]
    ids = ids_of(request)
    return ContractJSON({"rois": items, "request_id": ids.request_id, "recipe_id": ids.recipe_id})
