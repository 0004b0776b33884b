"""A broker that speaks only MQTT 3.1.1 (amqtt): the agent falls back to 3.1.1 and serves.

amqtt answers a bare v5 CONNECT with "unacceptable protocol version", but misreads the
agent's own (a will and a session expiry) and never answers it: the agent's fallback after
unanswered v5 CONNECTs (a short keepalive here), and its immediate one on a refusal (with
a CONNECT amqtt can read). A frozen mosquitto must not leave the agent on 3.1.1.
"""

from __future__ import annotations

import base64
import os
import signal
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from structlog.testing import capture_logs

from adapters.mqtt.adapter import V5_REFUSED, MqttAdapter
from agent.config import MqttSettings
from agent.demo.discs import encode_png
from agent.ops.doctor.broker import probe_broker
from agent.ops.doctor.check import WARN
from tests.adapters.amqtt_support import Amqtt
from tests.adapters.conftest import wait_connected
from tests.adapters.mqtt_support import Broker, Client

ROI = {"role_id": "Inspection", "roi_id": "Inspection_1"}
PREFIX = "bdi/line1"
FALLBACK_LINE = (
    "mqtt broker speaks 3.1.1 only; connected with MQTT 3.1.1 (no ResponseTopic, no message expiry)"
)


@pytest.fixture(scope="module")
def v311_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Amqtt]:
    server = Amqtt(tmp_path_factory.mktemp("amqtt"))
    server.start()
    yield server
    server.stop()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def test_the_broker_refuses_an_mqtt_5_connect(v311_broker: Amqtt) -> None:
    answers: list[Any] = []
    answered = threading.Event()

    def on_connect(client: Any, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        answers.append(reason)
        answered.set()

    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, "v5-probe", protocol=mqtt.MQTTv5)
    client.on_connect = on_connect
    client.connect("127.0.0.1", v311_broker.port)
    client.loop_start()
    try:
        assert answered.wait(10)
    finally:
        client.disconnect()
        client.loop_stop()
    assert answers[0] == V5_REFUSED  # what the adapter falls back on at once


class ReadableV5Adapter(MqttAdapter):
    """Sends its MQTT 5 CONNECT without a will and properties: the form amqtt reads and
    answers with "unacceptable protocol version", as other 3.1.1 brokers answer any v5
    CONNECT. Everything else is the adapter's own."""

    def _make_client(self) -> mqtt.Client:
        client = super()._make_client()
        if self.protocol == mqtt.MQTTv5:
            client.will_clear()
        return client

    def _connect(self) -> None:
        if self.protocol != mqtt.MQTTv5:
            super()._connect()
            return
        self.client.connect_async(self.cfg.host, self.cfg.port, keepalive=self.cfg.keepalive_s)
        self.client.loop_start()


def test_a_refused_v5_connect_falls_back_at_once(v311_broker: Amqtt, make_agent) -> None:
    agent = make_agent(agent_id="line2", mqtt={"enabled": True, "port": v311_broker.port})
    adapter = ReadableV5Adapter(agent.settings, agent)
    with capture_logs() as logs:
        adapter.start()
        try:
            wait_connected(agent, timeout=20)  # well under a keepalive (30 s)
        finally:
            adapter.stop()
    assert adapter.protocol_name == "3.1.1"
    events = [e for e in logs if e["event"].startswith("mqtt broker")]
    assert [e["event"] for e in events] == [
        "mqtt broker does not take MQTT 5; trying MQTT 3.1.1",
        FALLBACK_LINE,
    ]
    assert "Unsupported protocol version" in events[0]["why"]


def wait_until(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(what)
        time.sleep(0.05)


def ask(plc: Client, command: str, **payload: Any) -> tuple[str, dict[str, Any]]:
    """The reply's topic and body, found by request_id (3.1.1 has no CorrelationData)."""
    request_id = str(uuid.uuid4())
    plc.publish(f"{PREFIX}/cmd/{command}", {"request_id": request_id, **ROI, **payload})
    topic, body, _ = plc.wait_for(
        lambda t, b: "/cmd/" not in t and isinstance(b, dict) and b.get("request_id") == request_id,
        timeout=120,
    )[0]
    return topic, body


def test_the_agent_falls_back_to_3_1_1_and_serves_3_1_1_clients(
    v311_broker: Amqtt, mqtt_agent, ok_pngs, test_discs
) -> None:
    with capture_logs() as logs:
        agent, adapter = mqtt_agent(v311_broker.port, wait=False, keepalive_s=5)
        wait_connected(agent, timeout=60)
        # Said once the broker, up, also refused a bare MQTT 5 CONNECT (a moment later).
        wait_until(lambda: FALLBACK_LINE in [e["event"] for e in logs], 30, "no fallback line")
    assert adapter.protocol_name == "3.1.1"
    assert [e["event"] for e in logs].count(FALLBACK_LINE) == 1

    plc = Client(v311_broker.port, mqtt.MQTTv311, client_id="plc-v311")
    try:
        plc.wait_for(lambda t, b: t == f"{PREFIX}/status" and b == "online", timeout=30)
        topic, fit = ask(plc, "fit_ok", mm_per_px=0.2, images=[b64(p) for p in ok_pngs[:6]])
        assert topic == f"{PREFIX}/result/fit_ok"
        assert fit["ok"] and fit["ok_added"] == 6 and fit["source"] == "mqtt"
        image = b64(encode_png(test_discs[0].image))
        topic, infer = ask(plc, "infer", mm_per_px=0.2, image=image)
        assert topic == f"{PREFIX}/result/infer"
        assert infer["ok"] and infer["score"] >= 0 and infer["seq"] > fit["seq"]
    finally:
        plc.close()


def test_a_broker_frozen_at_boot_does_not_leave_the_agent_on_3_1_1(
    fresh_broker: Broker, mqtt_agent
) -> None:
    """A frozen mosquitto leaves the v5 CONNECTs unanswered too (the kernel accepts the
    connections): the agent tries 3.1.1, and once the broker is back it finds MQTT 5."""
    assert fresh_broker.proc is not None
    pid = fresh_broker.proc.pid
    with capture_logs() as logs:
        os.kill(pid, signal.SIGSTOP)
        try:
            agent, adapter = mqtt_agent(fresh_broker.port, wait=False, keepalive_s=5)
            wait_until(lambda: adapter.protocol_name == "3.1.1", 60, "no 3.1.1 attempt")
        finally:
            os.kill(pid, signal.SIGCONT)
        wait_until(
            lambda: adapter.protocol_name == "5" and agent.bus.mqtt_state == "connected",
            60,
            f"protocol {adapter.protocol_name}, MQTT {agent.bus.mqtt_state}",
        )
    events = [e["event"] for e in logs]
    assert "mqtt broker accepts MQTT 5 after all; reconnecting with MQTT 5" in events
    assert FALLBACK_LINE not in events


def test_doctor_says_the_broker_speaks_3_1_1_and_the_agent_uses_it(v311_broker: Amqtt) -> None:
    check = probe_broker(MqttSettings(host="127.0.0.1", port=v311_broker.port), "doctor-t", 5)
    assert check.status == WARN, check
    assert "with MQTT 3.1.1" in check.message and "the agent uses MQTT 3.1.1" in check.message
    assert "refused MQTT 5" in check.message and "MQTT 5" in check.fix
