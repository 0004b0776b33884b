"""Two agents on one data root through a broker outage (issue 18, point 3), against a real
mosquitto and the real spool files: each spools into a folder of its own, and after the
broker is back every verdict of both is published and both are online again. Once with
the agents in this process, once as two ``bdi-agent run`` processes stopped by SIGTERM
while the broker is still down and started again after it."""

# Fixtures come from tests/adapters/conftest.py.
# ruff: noqa: F811

from __future__ import annotations

from pathlib import Path

import pytest

from adapters.mqtt.spool import spool_folder
from agent.parsing import parse_command
from tests.adapters.conftest import mqtt_agent, wait_connected  # noqa: F401
from tests.adapters.mqtt_support import Broker, Client
from tests.reliability.fault_support import FORM, HttpAgent, upload, wait_until
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
            # What the agent says it holds is what its folder holds.
            on_disk = len(list(adapter.spool.folder.glob("*.json")))
            assert on_disk == adapter.spool.size == VERDICTS_EACH == agent.bus.spool_size
        fresh_broker.start()
        for agent, _ in started:
            wait_connected(agent, timeout=60)
        last = reader.wait_for(lambda t, b: t.endswith("/last"), count=len(sent), timeout=60)
        received = {body["request_id"] for _, body, _ in last}
        for agent, adapter in started:
            assert adapter.spool.size == 0 == agent.bus.spool_size
            assert not list(adapter.spool.folder.glob("*.json"))
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


# -- the same with two `bdi-agent run` processes, stopped by SIGTERM during the outage ----

PROCESS_VERDICTS = 4


def _start(data: Path, port: int) -> dict[str, HttpAgent]:
    """Both agents, started together (each loads its model for some seconds)."""
    agents = {
        name: HttpAgent(
            data,
            BDI_AGENT_ID=name,
            BDI_INPUT_SIZE="112",
            BDI_MQTT__ENABLED="true",
            BDI_MQTT__PORT=str(port),
        )
        for name in AGENTS
    }
    try:
        for agent in agents.values():
            agent.wait_ready()
    except BaseException:
        for agent in agents.values():
            agent.stop()
        raise
    return agents


def _mqtt_of(agent: HttpAgent, state: str) -> None:
    with agent.client(timeout=10) as client:
        wait_until(lambda: client.get("/health").json()["mqtt"] == state, 60, f"mqtt {state}")


@pytest.mark.reliability(
    "fault", "bdi-agent run x2 on one root: SIGTERM while the broker is down, restart"
)
def test_two_agent_processes_stopped_during_an_outage_lose_no_verdict(
    fresh_broker: Broker, ok_pngs, tmp_path: Path, record_property
) -> None:
    """The issue's setting end to end: the agents are processes, the outage outlasts them
    (each must still exit at SIGTERM, its verdicts on disk), and the restarts publish every
    verdict of both."""
    data = tmp_path / "data"
    agents = _start(data, fresh_broker.port)
    exits: list[int] = []
    sent: set[str] = set()
    try:
        with agents[AGENTS[0]].client() as client:
            fitted = client.post("/fit_ok", data=FORM, files=upload(ok_pngs[:3]))
            assert fitted.status_code == 200, fitted.text
        fresh_broker.stop()
        for name, agent in agents.items():
            _mqtt_of(agent, "disconnected")
            with agent.client() as client:
                for i in range(PROCESS_VERDICTS):
                    request_id = f"{name}-run-{i}"
                    image = {"image": ("p.png", ok_pngs[3 + i], "image/png")}
                    reply = client.post(
                        "/infer",
                        data={**FORM, "heatmap": "false"},
                        files=image,
                        headers={"X-Request-Id": request_id},
                    )
                    assert reply.status_code == 200, reply.text
                    sent.add(request_id)
                # The verdicts reach the spool on the agent's own threads, just after.
                wait_until(
                    lambda client=client: (
                        client.get("/stats").json()["spool_size"] == PROCESS_VERDICTS
                    ),
                    60,
                    f"{name}'s verdicts spooled",
                )
            assert len(list(spool_folder(data, name).glob("*.json"))) == PROCESS_VERDICTS
        exits += [agent.stop() for agent in agents.values()]  # the broker is still down
        fresh_broker.start()
        reader = Client(fresh_broker.port, client_id="reader", subscribe=("bdi/+/roi/#",))
        try:
            agents = _start(data, fresh_broker.port)
            last = reader.wait_for(
                lambda t, b: t.endswith("/last") and b.get("request_id") in sent,
                count=len(sent),
                timeout=120,
            )
            received = {body["request_id"] for _, body, _ in last}
            for name, agent in agents.items():
                _mqtt_of(agent, "connected")
                assert not list(spool_folder(data, name).glob("*.json"))
        finally:
            reader.close()
    finally:
        exits += [agent.stop() for agent in agents.values()]
    lost = len(sent - received)
    record_property("tried", len(sent))
    record_property("lost", lost)
    record_property(
        "detail",
        f"{len(received & sent)} of {len(sent)} verdicts published by the restarted agents; "
        f"exits at SIGTERM: {exits}",
    )
    assert lost == 0, sorted(sent - received)
    assert exits == [0, 0, 0, 0], [agent.output() for agent in agents.values()]
