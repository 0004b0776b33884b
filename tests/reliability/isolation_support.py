"""What the isolation tests share (issue: one bad message, id or reply must never take
MQTT down): a PLC that asks and waits for the reply by request id, a fitted ROI, and the
check that the agent still judges a normal inference afterwards."""

from __future__ import annotations

import uuid
from typing import Any

from adapters.mqtt.adapter import MqttAdapter
from agent.bootstrap import Agent
from agent.parsing import parse_command
from tests.adapters.mqtt_support import Client
from tests.support import b64

ROI = {"role_id": "Inspection", "roi_id": "Inspection_1"}
MM = 0.2


def ask(
    plc: Client, prefix: str, command: str, timeout: float = 120, **payload: Any
) -> dict[str, Any]:
    """Publish one command and return its reply: the next one carrying its request id
    (a reused id may have earlier replies)."""
    request_id = payload.pop("request_id", None) or str(uuid.uuid4())
    earlier = len(replies_to(plc, request_id, 0))
    plc.publish(f"{prefix}/cmd/{command}", {"request_id": request_id, **payload})
    return replies_to(plc, request_id, earlier + 1, timeout)[-1]


def replies_to(plc: Client, request_id: str, count: int, timeout: float = 120) -> list[dict]:
    """The first ``count`` replies carrying ``request_id`` (all of them when ``count`` is
    0), in arrival order."""
    found = plc.wait_for(
        lambda t, b: "/result/" in t and isinstance(b, dict) and b.get("request_id") == request_id,
        timeout,
        count,
    )
    return [body for _, body, _ in (found[:count] if count else found)]


def fit(agent: Agent, pngs: list[bytes], roi: dict[str, str] = ROI) -> None:
    payload = {**roi, "mm_per_px": MM, "images": [b64(p) for p in pngs]}
    reply = agent.bus.execute(parse_command("fit_ok", payload, "test"), timeout=300)
    assert reply.ok, reply.to_dict()


def still_serving(plc: Client, adapter: MqttAdapter, prefix: str, png: bytes) -> None:
    """The agent is connected and judges a normal inference over MQTT."""
    verdict = ask(plc, prefix, "infer", **ROI, mm_per_px=MM, image=b64(png), heatmap=False)
    assert verdict["ok"] and isinstance(verdict["score"], float), verdict
    assert adapter.client.is_connected() and adapter.agent.bus.mqtt_state == "connected"
