"""Two agents on one data root through a broker outage (issue 18, point 3), against a real
mosquitto and the real spool files: each spools into a folder of its own, and after the
broker is back every verdict of both is published and both are online again."""

# Fixtures come from tests/adapters/conftest.py.
# ruff: noqa: F811

from __future__ import annotations

from pathlib import Path

import pytest

from adapters.mqtt.spool import spool_folder
from agent.parsing import parse_command
from tests.adapters.conftest import mqtt_agent, wait_connected  # noqa: F401
from tests.adapters.mqtt_support import Broker, Client
from tests.reliability.isolation_support import MM, ROI, b64, fit

AGENTS = ("line-a", "line-b")
VERDICTS_EACH = 10


@pytest.mark.reliability("fault", "two agents on one root: broker down, 20 verdicts spooled")
def test_two_agents_on_one_root_lose_no_verdict_through_an_outage(
    fresh_broker: Broker, mqtt_agent, ok_pngs, tmp_path: Path, record_property
) -> None:
    data = tmp_path / "data"
    started = [mqtt_agent(fresh_broker.port, agent_id=name, data_root=data) for name in AGENTS]
    fit(started[0][0], ok_pngs[:3])
    reader = Client(
        fresh_broker.port, client_id="reader", persistent=True, subscribe=("bdi/+/roi/#",)
    )
    try:
        # The reader's subscription must be in the broker, and on its disk, before the
        # outage: a barrier message it receives proves the first; stopping (not killing)
        # mosquitto writes its sessions out. Verdicts published before the reader is back
        # are then queued for it instead of racing its reconnect.
        reader.publish("bdi/barrier/roi/subscribed", {"barrier": True})
        reader.wait_for(lambda t, b: t == "bdi/barrier/roi/subscribed", timeout=30)
        fresh_broker.stop()
        for agent, _ in started:
            wait_connected(agent, state="disconnected")
        sent: set[str] = set()
        for i in range(VERDICTS_EACH):
            for (agent, _), name in zip(started, AGENTS, strict=True):
                request_id = f"{name}-{i}"
                payload = {
                    **ROI,
                    "request_id": request_id,
                    "mm_per_px": MM,
                    "image": b64(ok_pngs[3 + i % 6]),
                    "heatmap": False,
                }
                assert agent.bus.execute(parse_command("infer", payload, "http"), timeout=120).ok
                sent.add(request_id)
        for (agent, adapter), name in zip(started, AGENTS, strict=True):
            # The verdict events follow each reply on the delivery thread, then the outbox.
            assert agent.bus.delivery.flush(30) and adapter.outbox.drain(30)
            assert adapter.spool.folder == spool_folder(data, name)
            assert adapter.spool.size == VERDICTS_EACH == agent.bus.spool_size
        fresh_broker.start()
        for agent, _ in started:
            wait_connected(agent, timeout=60)
        last = reader.wait_for(lambda t, b: t.endswith("/last"), count=len(sent), timeout=60)
        received = {body["request_id"] for _, body, _ in last}
        for agent, adapter in started:
            assert adapter.spool.size == 0 == agent.bus.spool_size
            assert agent.bus.health()["status"] == "ok"
    finally:
        reader.close()
    lost = len(sent - received)
    record_property("tried", len(sent))
    record_property("lost", lost)
    record_property(
        "detail", f"{len(received & sent)} of {len(sent)} verdicts of 2 agents published after"
    )
    assert lost == 0, sorted(sent - received)
