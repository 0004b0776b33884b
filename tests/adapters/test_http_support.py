"""A real uvicorn server around a test agent, and what the GUI's requests look like.

Shared by the ``test_http*`` modules, which import its fixtures; it holds no tests.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from adapters.http.adapter import HttpAdapter, create
from agent.bootstrap import Agent

ROI = {"role_id": "Inspection", "roi_id": "Inspection_1"}
MM_PER_PX = 0.2
FORM = {**ROI, "mm_per_px": str(MM_PER_PX)}


@dataclass
class Server:
    agent: Agent
    adapter: HttpAdapter
    client: httpx.Client

    @property
    def url(self) -> str:
        return self.adapter.url


def files(field: str, images: Sequence[bytes]) -> list[tuple[str, tuple[str, bytes, str]]]:
    """Repeated multipart file parts, as the GUI sends ``images``."""
    return [(field, (f"roi_{i}.png", data, "image/png")) for i, data in enumerate(images)]


def image(data: bytes) -> dict[str, tuple[str, bytes, str]]:
    return {"image": ("roi.png", data, "image/png")}


def assert_error(response: httpx.Response, code: int, kind: str) -> dict[str, Any]:
    """The contract's error body, with the request id echoed in the header."""
    body = response.json()
    assert response.status_code == code, body
    assert body["error"]["code"] == code and body["error"]["kind"] == kind, body
    assert body["error"]["message"]
    assert body["request_id"] and body["request_id"] == response.headers["x-request-id"]
    assert body["recipe_id"]
    return body


@pytest.fixture
def serve(make_agent: Callable[..., Agent]) -> Iterator[Callable[..., Server]]:
    """``serve(**settings overrides)``: an agent with its HTTP adapter on a free port."""
    running: list[Server] = []

    def start(**overrides: Any) -> Server:
        http = {"enabled": True, "port": 0, **overrides.pop("http", {})}
        agent = make_agent(http=http, **overrides)
        adapter = create(agent.settings, agent)
        adapter.start()
        headers = {"X-API-Key": agent.settings.api_key} if agent.settings.api_key else {}
        client = httpx.Client(base_url=adapter.url, timeout=120, headers=headers)
        running.append(Server(agent, adapter, client))
        return running[-1]

    yield start
    for server in running:
        server.client.close()
        server.adapter.stop()


@pytest.fixture
def server(serve: Callable[..., Server]) -> Server:
    return serve()


@pytest.fixture
def fitted(server: Server, ok_pngs: list[bytes]) -> Server:
    """A server whose ROI has a memory from 8 OK crops."""
    response = server.client.post("/fit_ok", data=FORM, files=files("images", ok_pngs[:8]))
    assert response.status_code == 200, response.json()
    return server
