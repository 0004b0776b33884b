"""Replies that could never be published, and numbers that could never be JSON (issue 18,
points 2 and 8), against a real mosquitto and real spool files: a v5 ResponseTopic no
broker takes gets its refusal on the result topic, a poisoned spool file is moved aside
instead of wedging MQTT across restarts, and a scale or polygon that would make an
``Infinity`` or hold the engine for seconds is refused."""

# Fixtures come from tests/adapters/conftest.py.
# ruff: noqa: F811

from __future__ import annotations

import json
from pathlib import Path

import pytest

from adapters.mqtt.spool import REJECTED, Spool, spool_folder
from adapters.mqtt.topics import json_payload
from tests.adapters.conftest import broker, mqtt_agent, wait_connected  # noqa: F401
from tests.adapters.mqtt_support import Broker, Client
from tests.reliability.fault_support import wait_until
from tests.reliability.isolation_support import MM, ROI, ask, b64, fit, replies_to, still_serving

PREFIX = "bdi/line1"
# Topics mosquitto lets through as a ResponseTopic but refuses to publish to (one with a
# control character never reaches the agent: mosquitto drops the client that sends it).
BAD_RESPONSE_TOPICS = ["replies/+/x", "replies/#", "#", "+", "$SYS/x"]


@pytest.mark.reliability("bad_input", "v5 ResponseTopic with wildcards or $, twice each")
def test_a_response_topic_no_broker_takes_is_refused_on_the_result_topic(
    broker: Broker, mqtt_agent, ok_pngs, record_property
) -> None:
    agent, adapter = mqtt_agent(broker.port)
    fit(agent, ok_pngs[:3])
    plc = Client(broker.port, client_id="plc-rt", subscribe=(f"{PREFIX}/#", "replies/#"))
    image = b64(ok_pngs[4])
    try:
        for i, topic in enumerate(BAD_RESPONSE_TOPICS):
            request = {"request_id": f"rt-{i}", **ROI, "mm_per_px": MM, "image": image}
            for _ in range(2):  # a repeat of it is refused again, never dropped
                plc.publish(
                    f"{PREFIX}/cmd/infer", request, ResponseTopic=topic, CorrelationData=b"c"
                )
            for reply in replies_to(plc, f"rt-{i}", count=2):
                assert reply["error"]["kind"] == "bad_request", reply
                assert "ResponseTopic" in reply["error"]["message"]
        refusal = plc.wait_for(
            lambda t, b: "/result/" in t and isinstance(b, dict) and b.get("request_id") == "rt-0"
        )
        topic, _, properties = refusal[0]
        assert topic == f"{PREFIX}/result/infer" and properties.CorrelationData == b"c"
        # The same request id with a topic that works is answered there.
        request = {"request_id": "rt-0", **ROI, "mm_per_px": MM, "image": image}
        plc.publish(f"{PREFIX}/cmd/infer", request, ResponseTopic="replies/ok")
        _, verdict, _ = plc.wait_for(lambda t, b: t == "replies/ok")[0]
        assert verdict["ok"] and verdict["request_id"] == "rt-0"
        still_serving(plc, adapter, PREFIX, ok_pngs[5])
        assert adapter.spool.size == 0
    finally:
        plc.close()
    record_property("tried", 2 * len(BAD_RESPONSE_TOPICS))
    record_property("failures", 0)
    record_property("detail", "each refused on result/infer with its CorrelationData")


def _poison(folder: Path, name: str, record: dict | bytes) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    data = record if isinstance(record, bytes) else json.dumps(record).encode()
    (folder / name).write_bytes(data)


@pytest.mark.reliability("fault", "spool with a wildcard topic and unreadable files at its head")
def test_spooled_messages_that_cannot_be_published_are_moved_aside(
    fresh_broker: Broker, mqtt_agent, ok_pngs, tmp_path: Path, record_property
) -> None:
    data = tmp_path / "data"
    folder = spool_folder(data, "line1")
    record = {"qos": 1, "retain": False, "spooled_at": 0, "expiry_s": None, "correlation": None}
    # What an older version left at the head of its spool, then good replies behind it.
    _poison(folder, f"{1:020d}.json", {**record, "topic": "replies/#", "payload": "{}"})
    _poison(folder, f"{2:020d}.json", b"{not json")
    _poison(
        folder, f"{3:020d}.json", {**record, "topic": "a/b", "payload": "{}", "correlation": "zz"}
    )
    spool = Spool(folder, 1 << 20)
    for n in range(3):
        spool.append(f"{PREFIX}/result/infer", json.dumps({"n": n}).encode())
    watcher = Client(fresh_broker.port, client_id="watcher", subscribe=(f"{PREFIX}/#",))
    try:
        agent, adapter = mqtt_agent(fresh_broker.port, data_root=data)
        flushed = watcher.wait_for(lambda t, b: t.endswith("/result/infer"), count=3)
        assert [body["n"] for _, body, _ in flushed] == [0, 1, 2]
        assert adapter.spool.size == 0 and adapter.spool.rejected == 3
        # /stats and the metrics count what went aside
        wait_until(lambda: agent.bus.mqtt_rejected == 3, 30, "3 messages rejected")
        assert sorted(p.name for p in (folder / REJECTED).iterdir()) == [
            f"{n:020d}.json" for n in (1, 2, 3)
        ]
        fit(agent, ok_pngs[:3])
        still_serving(watcher, adapter, PREFIX, ok_pngs[5])
        adapter.stop()
        # A restart finds nothing to retry: the bad files stay aside.
        restarted, again = mqtt_agent(fresh_broker.port, data_root=data, wait=False)
        wait_connected(restarted, timeout=60)  # as every reconnect here: a loaded CI machine
        assert again.spool.size == 0 and again.spool.rejected == 0
    finally:
        watcher.close()
    record_property("tried", 3)
    record_property("lost", 0)
    record_property("detail", "3 bad spool files moved aside, the 3 behind them published")


@pytest.mark.reliability("bad_input", "mm_per_px 1e200 and a 10 001-point polygon over MQTT")
def test_a_scale_past_float_range_and_a_huge_polygon_are_refused(
    broker: Broker, mqtt_agent, ok_pngs, record_property
) -> None:
    agent, adapter = mqtt_agent(broker.port)
    fit(agent, ok_pngs[:3])
    plc = Client(broker.port, client_id="plc-small")
    image = b64(ok_pngs[4])
    try:
        for scale in (1e200, 1e154, 1001):
            reply = ask(plc, PREFIX, "infer", **ROI, mm_per_px=scale, image=image)
            assert (
                reply["error"]["kind"] == "bad_request" and "mm_per_px" in reply["error"]["message"]
            )
        points = [[i % 200, (i * 7) % 200] for i in range(10_001)]
        shape = {"kind": "polygon", "points": points}
        reply = ask(plc, PREFIX, "infer", **ROI, mm_per_px=MM, image=image, shape=shape)
        assert reply["error"]["kind"] == "bad_request" and "10000" in reply["error"]["message"]
        still_serving(plc, adapter, PREFIX, ok_pngs[5])
    finally:
        plc.close()
    record_property("tried", 4)
    record_property("failures", 0)
    record_property("detail", "refused as bad_request; the agent went on judging")


def test_a_result_with_a_non_finite_number_becomes_an_internal_error() -> None:
    body = {"ok": True, "command": "infer", "request_id": "r", "seq": 3, "area_mm2": float("inf")}
    reply = json.loads(json_payload(body))  # strict JSON: no Infinity anywhere
    assert reply["ok"] is False and reply["error"]["kind"] == "internal"
    assert reply["request_id"] == "r" and reply["seq"] == 3
