"""The core's events over HTTP (contract section 9): ``GET /events`` as Server-Sent
Events, ``GET /recent`` with its pictures and ``GET /rois``, on a real uvicorn server.

The protocol tests emit contract-shaped events straight through ``agent.bus.events`` and
fill ``agent.bus.recent`` directly; one test runs the real path (an HTTP ``/infer`` gives
a ``verdict`` on the stream and a recent verdict with its pictures).
"""

# The fixtures come from test_http_support (imported below), and their names are the
# parameters of the tests: that is how pytest injects them, not a redefinition.
# ruff: noqa: F811

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest

from adapters.http import routes_events
from adapters.http.routes_events import CLIENT_QUEUE, ClientQueue, close_streams
from agent.demo.discs import encode_png, make_set
from agent.events import Event
from agent.recent import RecentVerdict
from tests.adapters.test_http_support import (  # noqa: F401 (fixtures)
    FORM,
    ROI,
    Server,
    assert_error,
    files,
    fitted,
    image,
    serve,
    server,
)

READ_TIMEOUT = 20  # a frame that does not come fails the test instead of hanging it


def verdict_body(role: str = "Inspection", roi: str = "Inspection_1", **extra: Any) -> dict:
    """A ``verdict`` body of contract section 9 (the events add ``seq``)."""
    return {
        "recipe_id": "default",
        "role_id": role,
        "roi_id": roi,
        "score": 0.42,
        "threshold": 0.5,
        "is_anomaly": False,
        "n_regions": 0,
        "max_area_mm2": None,
        "request_id": "req-1",
        "source": "http",
        "ts": "2025-10-26T12:12:12.345Z",
        "model_version": "v1",
        **extra,
    }


ALERT = {
    "kind": "consecutive_anomalies",
    "count": 3,
    "since": "2025-10-26T12:12:12.345Z",
    "last_request_id": "req-3",
    "recipe_id": "default",
    "role_id": "Inspection",
    "roi_id": "Inspection_1",
}
STATE = {
    "fitted": True,
    "coreset_size": 256,
    "calibrated": True,
    "threshold": 0.5,
    "model_version": "v1",
    "recipe_id": "default",
    "role_id": "Inspection",
    "roi_id": "Inspection_1",
}


# -- reading a stream ---------------------------------------------------------------------


@dataclass
class Frame:
    event: str | None = None
    id: str | None = None
    data: list[str] = field(default_factory=list)
    comments: list[str] = field(default_factory=list)
    retry: int | None = None

    @property
    def body(self) -> dict[str, Any]:
        return json.loads("\n".join(self.data))


class Stream:
    """An open ``/events`` response, read frame by frame (the SSE wire format)."""

    def __init__(self, response: httpx.Response) -> None:
        self.response = response
        self._lines = response.iter_lines()

    def frame(self) -> Frame:
        frame, seen = Frame(), False
        for line in self._lines:
            if line == "":
                if seen:
                    return frame
                continue
            seen = True
            name, _, value = line.partition(":")
            value = value.removeprefix(" ")
            if name == "":
                frame.comments.append(value)
            elif name == "data":
                frame.data.append(value)
            elif name == "retry":
                frame.retry = int(value)
            elif name in ("event", "id"):
                setattr(frame, name, value)
        raise EOFError("the stream ended")

    def any_event(self) -> Frame:
        """The next frame that is an event, skipping keep-alive comments."""
        while True:
            frame = self.frame()
            if frame.event is not None:
                return frame

    def event(self) -> Frame:
        """The next event that is not ``health`` (the core emits those on its own)."""
        while True:
            frame = self.any_event()
            if frame.event != "health":
                return frame


@contextmanager
def events(
    server: Server, headers: dict[str, str] | None = None, **params: Any
) -> Iterator[Stream]:
    """``GET /events``, subscribed once this yields (its first frame has been read)."""
    timeout = httpx.Timeout(10, read=READ_TIMEOUT)
    with server.client.stream(
        "GET", "/events", params=params, headers=headers or {}, timeout=timeout
    ) as response:
        assert response.status_code == 200, response.read()
        assert response.headers["content-type"].startswith("text/event-stream")
        stream = Stream(response)
        hello = stream.frame()
        assert hello.retry == routes_events.RETRY_MS
        assert hello.comments and hello.comments[0].startswith("connected")
        assert f"boot {server.agent.bus.boot_id}" in hello.comments[0]
        assert hello.comments[0].endswith(f", agent {server.agent.settings.agent_id}")
        yield stream


def wait_until(condition: Callable[[], bool], what: str, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def png(seed: int) -> bytes:
    return encode_png(make_set(seed=seed, n_ok=1, size=96)[0].image)


# -- GET /events --------------------------------------------------------------------------


def test_stream_frames_each_event_with_its_name_seq_and_body(server: Server) -> None:
    bus = server.agent.bus
    with events(server) as stream:
        verdict = bus.events.emit("verdict", verdict_body())
        alert = bus.events.emit("alert", ALERT)
        state = bus.events.emit("state", STATE)
        health = bus.events.emit("health", bus.health())
        for sent in (verdict, alert, state):
            frame = stream.event()
            assert (frame.event, frame.id) == (sent.name, str(sent.seq))
            assert frame.data == [sent.data]  # one line: the compact JSON, as emitted
            assert frame.body == sent.body
        assert frame_named(stream, "health", health.seq).body == health.body
    assert verdict.body["seq"] == verdict.seq  # a verdict carries its seq in the body


def frame_named(stream: Stream, name: str, seq: int) -> Frame:
    while True:
        frame = stream.frame()
        if frame.event == name and frame.id == str(seq):
            return frame


def test_filters_keep_the_events_of_one_roi_and_every_health(server: Server) -> None:
    emit = server.agent.bus.events.emit
    with events(server, role_id="Inspection", roi_id="Inspection_2", recipe_id="Line-A") as s:
        emit("verdict", verdict_body(roi="Inspection_1", recipe_id="line-a"))
        emit("verdict", verdict_body(roi="Inspection_2"))  # recipe default: filtered out
        emit("alert", {**ALERT, "roi_id": "Inspection_1", "recipe_id": "line-a"})
        wanted = emit("verdict", verdict_body(roi="Inspection_2", recipe_id="line-a"))
        health = emit("health", server.agent.bus.health())  # about every ROI: passes
        after = emit("state", {**STATE, "roi_id": "Inspection_2", "recipe_id": "line-a"})
        got = [(f.event, f.id) for f in (s.any_event(), s.any_event(), s.any_event())]
    assert got == [
        ("verdict", str(wanted.seq)),
        ("health", str(health.seq)),
        ("state", str(after.seq)),
    ]


def test_filtered_stream_passes_nothing_else(server: Server) -> None:
    emit = server.agent.bus.events.emit
    with events(server, roi_id="Inspection_2") as stream:
        emit("verdict", verdict_body(roi="Inspection_1"))
        emit("state", STATE)
        emit("alert", ALERT)
        wanted = emit("state", {**STATE, "roi_id": "Inspection_2"})
        frame = stream.event()
        assert (frame.event, frame.id) == ("state", str(wanted.seq))


def test_last_event_id_resumes_after_that_seq_then_goes_live(server: Server) -> None:
    emit = server.agent.bus.events.emit
    first = emit("verdict", verdict_body(request_id="a"))
    second = emit("verdict", verdict_body(request_id="b"))
    third = emit("alert", ALERT)
    with events(server, headers={"Last-Event-ID": str(first.seq)}) as stream:
        assert stream.event().id == str(second.seq)
        assert stream.event().id == str(third.seq)
        live = emit("state", STATE)
        assert stream.event().id == str(live.seq)
    # Browsers that cannot set the header say the same in the query.
    with events(server, last_event_id=second.seq) as stream:
        assert stream.event().id == str(third.seq)
        assert stream.event().id == str(live.seq)
    # The header wins over the query.
    with events(server, headers={"Last-Event-ID": str(third.seq)}, last_event_id=0) as stream:
        assert stream.event().id == str(live.seq)


def test_a_client_that_missed_evicted_events_is_told_first(
    serve: Callable[..., Server],
) -> None:
    server = serve(events_backlog_bytes=2000)  # a handful of verdicts
    emit = server.agent.bus.events.emit
    sent = [emit("verdict", verdict_body(request_id=f"r{i}")) for i in range(20)]
    kept, missed = server.agent.bus.events.since(sent[0].seq)
    assert missed and kept and kept[-1].seq == sent[-1].seq
    with events(server, headers={"Last-Event-ID": str(sent[0].seq)}) as stream:
        notice = stream.event()
        assert notice.event == "missed" and notice.id is None  # it moves no Last-Event-ID
        assert notice.body == {"reason": "backlog", "after": sent[0].seq, "dropped": None}
        assert [stream.event().id for _ in kept] == [str(e.seq) for e in kept]


def test_an_id_from_an_earlier_run_gets_the_whole_backlog_after_a_notice(
    server: Server,
) -> None:
    emit = server.agent.bus.events.emit
    sent = [emit("verdict", verdict_body(request_id=f"r{i}")) for i in range(3)]
    stale = server.agent.bus.events.last_seq + 1000  # the agent restarted since
    with events(server, headers={"Last-Event-ID": str(stale)}) as stream:
        notice = stream.event()
        assert notice.event == "missed" and notice.body["reason"] == "restart"
        ids = [stream.event().id for _ in sent]
        assert ids == [str(e.seq) for e in sent]
        live = emit("alert", ALERT)
        assert stream.event().id == str(live.seq)


def test_a_bad_last_event_id_is_the_contracts_400(server: Server) -> None:
    for headers, params in (({"Last-Event-ID": "nope"}, {}), ({}, {"last_event_id": "-1"})):
        response = server.client.get("/events", headers=headers, params=params)
        assert_error(response, 400, "bad_request")


def test_a_closed_client_is_unsubscribed(server: Server) -> None:
    listeners = server.agent.bus.events._listeners
    before = len(listeners)
    with events(server):
        streams = server.adapter.app.state.event_streams
        assert len(streams) == 1 and len(listeners) == before + 1

    def ended() -> bool:
        # A closed socket shows when the server writes to it: keep giving it events
        # that nobody reads, however late the server notices.
        server.agent.bus.events.emit("verdict", verdict_body())
        return len(streams) == 0

    wait_until(ended, "the stream to end")
    wait_until(lambda: len(listeners) == before, "the stream's listener to go")


def test_closing_the_streams_ends_them_cleanly(server: Server) -> None:
    """What the adapter does on stop: an open stream ends at once, not after the server's
    grace period, and the client sees a complete response."""
    with events(server) as stream:
        close_streams(server.adapter.app)
        with pytest.raises(EOFError):
            stream.event()
    assert server.client.get("/health").status_code == 200  # the server still serves


def test_a_slow_clients_queue_drops_its_oldest_events() -> None:
    """The bounded queue between the delivery thread and one client's stream."""

    async def scenario() -> tuple[list[int], int]:
        queue = ClientQueue(asyncio.get_running_loop(), {"roi_id": "Inspection_1"})
        body = verdict_body()
        events = [Event(i, "verdict", body, json.dumps(body)) for i in range(1, CLIENT_QUEUE + 51)]
        other = Event(999, "verdict", {**body, "roi_id": "x"}, "{}")
        thread = threading.Thread(target=lambda: [queue.offer(e) for e in [*events, other]])
        thread.start()
        thread.join()
        await asyncio.sleep(0)  # the loop runs the handed-over puts
        first = await queue.next()
        dropped = queue.dropped
        queue.close()
        rest = []
        while (event := await queue.next()) is not None:
            rest.append(event.seq)
        return [first.seq if first else -1, *rest], dropped

    seqs, dropped = asyncio.run(scenario())
    assert dropped == 50
    assert seqs == list(range(51, CLIENT_QUEUE + 51))  # the newest CLIENT_QUEUE, in order


# -- GET /recent and its pictures -------------------------------------------------------


def test_recent_lists_newest_first_with_picture_urls(serve: Callable[..., Server]) -> None:
    server = serve(recent_max=2)
    recent = server.agent.bus.recent
    pictures = {seq: (png(seq), png(seq + 100)) for seq in (11, 12, 13)}
    for seq, (picture, heatmap) in pictures.items():
        verdict = {**verdict_body(request_id=f"r{seq}"), "seq": seq}
        recent.add(RecentVerdict(seq, verdict, picture, heatmap if seq != 13 else None))

    body = server.client.get("/recent").json()
    assert [v["seq"] for v in body["verdicts"]] == [13, 12]  # 11 was evicted
    newest, older = body["verdicts"]
    assert newest["request_id"] == "r13" and newest["score"] == 0.42
    assert newest["image_url"] == "/recent/13/image.png" and newest["heatmap_url"] is None
    assert older["heatmap_url"] == "/recent/12/heatmap.png"
    assert body["request_id"] and body["recipe_id"] == "default"

    response = server.client.get(older["image_url"])
    assert response.status_code == 200 and response.headers["content-type"] == "image/png"
    assert response.content == pictures[12][0]
    assert server.client.get(older["heatmap_url"]).content == pictures[12][1]

    assert_error(server.client.get("/recent/13/heatmap.png"), 404, "not_found")
    for evicted in ("/recent/11/image.png", "/recent/11/heatmap.png", "/recent/99/image.png"):
        assert_error(server.client.get(evicted), 404, "not_found")
    assert_error(server.client.get("/recent/nope/image.png"), 400, "bad_request")

    only = server.client.get("/recent", params={"roi_id": "Inspection_2"}).json()
    assert only["verdicts"] == []


# -- GET /rois --------------------------------------------------------------------------


def test_rois_lists_every_fitted_roi_with_its_state(fitted: Server) -> None:
    body = fitted.client.get("/rois").json()
    (roi,) = body["rois"]
    assert roi["role_id"] == ROI["role_id"] and roi["roi_id"] == ROI["roi_id"]
    assert roi["recipe_id"] == "default" and roi["model_key"] == ROI["roi_id"]
    assert roi["fitted"] is True and roi["coreset_size"] > 0 and roi["model_version"]
    assert roi["calibrated"] is False and roi["threshold"] is None
    assert fitted.client.get("/rois", params={"recipe_id": "other"}).json()["rois"] == []


# -- the real path: an HTTP infer becomes a verdict on the stream -----------------------


def test_an_http_infer_is_a_verdict_on_the_stream_and_in_recent(
    fitted: Server, ok_pngs: list[bytes]
) -> None:
    with events(fitted) as stream:
        reply = fitted.client.post("/infer", data=FORM, files=image(ok_pngs[9])).json()
        frame = stream.event()
        while frame.event == "state":  # the fit's own state event may come first
            frame = stream.event()
    assert frame.event == "verdict", frame
    verdict = frame.body
    assert verdict["seq"] == int(frame.id or 0)
    assert verdict["request_id"] == reply["request_id"] and verdict["source"] == "http"
    assert verdict["score"] == pytest.approx(reply["score"])
    assert (verdict["role_id"], verdict["roi_id"]) == (ROI["role_id"], ROI["roi_id"])

    (listed, *_) = fitted.client.get("/recent").json()["verdicts"]
    assert listed["seq"] == verdict["seq"] and listed["heatmap_url"]
    for url in (listed["image_url"], listed["heatmap_url"]):
        picture = fitted.client.get(url)
        assert picture.status_code == 200 and picture.content.startswith(b"\x89PNG")


# -- the API key ------------------------------------------------------------------------

DATA_ROUTES = ("/events", "/recent", "/recent/1/image.png", "/recent/1/heatmap.png", "/rois")


def test_every_data_route_needs_the_api_key_and_the_console_page_does_not(
    serve: Callable[..., Server],
) -> None:
    server = serve(api_key="s3cret")
    server.agent.bus.recent.add(RecentVerdict(1, {**verdict_body(), "seq": 1}, png(1), png(2)))
    with httpx.Client(base_url=server.url, timeout=30) as anonymous:
        for path in DATA_ROUTES:
            assert_error(anonymous.get(path), 401, "unauthorized")
            assert_error(anonymous.get(path, headers={"X-API-Key": "wrong"}), 401, "unauthorized")
        page = anonymous.get("/ui/")
        assert page.status_code == 200 and "text/html" in page.headers["content-type"]
        assert anonymous.get("/ui", follow_redirects=True).url.path == "/ui/"
        for asset in ("/ui/console.js", "/ui/sse.js", "/ui/console.css"):
            assert anonymous.get(asset).status_code == 200, asset
        assert_error(anonymous.get("/ui/secret.txt"), 401, "unauthorized")
    assert_error(server.client.get("/ui/secret.txt"), 404, "not_found")
    for path in DATA_ROUTES[1:]:
        assert server.client.get(path).status_code == 200, path  # the client sends the key
    with events(server):
        pass
