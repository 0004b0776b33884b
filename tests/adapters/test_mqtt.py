"""The MQTT adapter against a real mosquitto: every command, both protocol versions."""

from __future__ import annotations

import base64
import json
import uuid

import paho.mqtt.client as mqtt
import pytest

from agent.demo.discs import encode_png
from tests.adapters.conftest import wait_connected
from tests.adapters.mqtt_support import Client

ROI = {"role_id": "Inspection", "roi_id": "Inspection_1"}
PREFIX = "bdi/line1"


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def ask(client: Client, command: str, **payload) -> dict:
    request_id = payload.pop("request_id", str(uuid.uuid4()))
    body = {"request_id": request_id, **payload}
    if command != "health":
        body = {**ROI, **body}
    client.publish(f"{PREFIX}/cmd/{command}", body)
    return client.reply(request_id, timeout=120)


@pytest.mark.parametrize("protocol", [mqtt.MQTTv5, mqtt.MQTTv311], ids=["v5", "v311"])
def test_every_command_round_trip(broker, mqtt_agent, ok_pngs, test_discs, protocol) -> None:
    mqtt_agent(broker.port)
    plc = Client(broker.port, protocol, client_id=f"plc-{protocol}")
    try:
        health = ask(plc, "health")
        assert health["ok"] and health["status"] == "ok" and health["mqtt"] == "connected"
        fit = ask(plc, "fit_ok", mm_per_px=0.2, images=[b64(p) for p in ok_pngs[:6]])
        assert fit["ok"] and fit["command"] == "fit_ok" and fit["source"] == "mqtt"
        assert fit["ok_added"] == 6 and fit["token_shape"] == [16, 16] and fit["seq"] > 0
        assert fit["recipe_id"] == "default" and fit["ts"].endswith("Z")
        image = b64(encode_png(test_discs[0].image))
        infer = ask(plc, "infer", mm_per_px=0.2, image=image)
        assert infer["ok"] and "heatmap_png_base64" in infer and infer["threshold"] is None
        assert infer["seq"] > fit["seq"]
        rust = [b64(encode_png(d.image)) for d in test_discs if d.kind == "rust"]
        assert ask(plc, "add_ng", mm_per_px=0.2, images=rust)["ng_added"] == 2
        assert ask(plc, "send_ng", mm_per_px=0.2, images=rust[:1])["ng_added"] == 1
        calibration = ask(plc, "calibrate_ng")
        assert calibration["ok"] and calibration["threshold"] > 0
        batch = ask(
            plc,
            "infer_batch",
            items=[{**ROI, "mm_per_px": 0.2, "image": image, "heatmap": False}] * 2,
        )
        assert [r["ok"] for r in batch["results"]] == [True, True]
        manifest = ask(plc, "manifest")
        assert manifest["datasets"] == {"ok": 6, "ng": 3} and manifest["memory"]["exists"]
        listing = ask(plc, "dataset_list", label="ng")
        first = listing["datasets"]["ng"]["files"][0]["file"]
        assert ask(plc, "dataset_delete", label="ng", file=first)["deleted"] == 1
        assert ask(plc, "dataset_clear", label="ng")["deleted"] == 2
    finally:
        plc.close()


def test_v5_response_topic_and_correlation_data(broker, mqtt_agent) -> None:
    mqtt_agent(broker.port)
    plc = Client(broker.port, subscribe=("replies/#",), client_id="plc-v5-rt")
    try:
        plc.publish(
            f"{PREFIX}/cmd/health",
            {"request_id": "h-1"},
            ResponseTopic="replies/me",
            CorrelationData=b"\x01corr",
        )
        _topic, body, props = plc.wait_for(lambda t, b: t == "replies/me")[0]
        assert body["request_id"] == "h-1" and body["command"] == "health"
        assert props.CorrelationData == b"\x01corr"
        assert props.MessageExpiryInterval > 0  # stale verdicts are not delivered late
    finally:
        plc.close()


@pytest.mark.parametrize(
    ("payload", "kind", "code"),
    [
        (b"{not json", "bad_request", 400),
        ({"request_id": "r-types", **ROI, "mm_per_px": "abc", "image": "AAAA"}, "bad_request", 400),
        ({"request_id": "r-missing", "role_id": "Inspection"}, "bad_request", 400),
        ({"request_id": "r-b64", **ROI, "mm_per_px": 0.2, "image": "%%%"}, "bad_request", 400),
        (
            {"request_id": "r-path", **ROI, "mm_per_px": 0.2, "image_path": "/etc/passwd"},
            "bad_request",
            400,
        ),
        (
            {"request_id": "r-dots", **ROI, "mm_per_px": 0.2, "image_path": "/tmp/../etc/passwd"},
            "bad_request",
            400,
        ),
        (
            {
                "request_id": "r-big",
                **ROI,
                "mm_per_px": 0.2,
                "image": b64(b"\x89PNG" + b"0" * 5000),
            },
            "payload_too_large",
            413,
        ),
    ],
    ids=[
        "not-json",
        "wrong-type",
        "missing-field",
        "bad-base64",
        "path-outside",
        "dotdot",
        "oversized",
    ],
)
def test_malformed_messages_get_an_error_reply(
    broker, mqtt_agent, ok_pngs, tmp_path, payload, kind, code
) -> None:
    _agent, _ = mqtt_agent(
        broker.port, image_roots=[str(tmp_path)], agent_settings={"max_image_bytes": 4096}
    )
    plc = Client(broker.port, client_id="plc-bad")
    try:
        if not isinstance(payload, bytes):
            fit = ask(plc, "fit_ok", mm_per_px=0.2, images=[b64(ok_pngs[0])])
            assert fit["ok"] or fit["error"]["kind"] == "payload_too_large"
        plc.publish(f"{PREFIX}/cmd/infer", payload)
        request_id = payload.get("request_id") if isinstance(payload, dict) else None
        _, body, _ = plc.wait_for(
            lambda t, b: (
                t == f"{PREFIX}/result/infer"
                and isinstance(b, dict)
                and not b["ok"]
                and b.get("request_id") == request_id
            )
        )[0]
        assert body["error"]["kind"] == kind and body["error"]["code"] == code
        assert body["error"]["message"]
        assert ask(plc, "health")["ok"]  # and the agent keeps serving
    finally:
        plc.close()


def test_duplicate_fit_is_applied_once_and_answered_again(broker, mqtt_agent, ok_pngs) -> None:
    mqtt_agent(broker.port)
    plc = Client(broker.port, client_id="plc-dup")
    try:
        payload = {
            **ROI,
            "request_id": "fit-dup",
            "mm_per_px": 0.2,
            "images": [b64(p) for p in ok_pngs[:3]],
        }
        plc.publish(f"{PREFIX}/cmd/fit_ok", payload)
        plc.publish(f"{PREFIX}/cmd/fit_ok", payload)
        replies = plc.wait_for(
            lambda t, b: (
                "/result/" in t and isinstance(b, dict) and b.get("request_id") == "fit-dup"
            ),
            count=2,
        )
        first, second = (body for _, body, _ in replies)
        assert first["model_version"] == second["model_version"]
        assert first["samples"] == second["samples"]
        assert ask(plc, "manifest")["datasets"]["ok"] == 3
    finally:
        plc.close()


def test_state_last_and_alert_topics(broker, mqtt_agent, ok_pngs) -> None:
    _agent, _ = mqtt_agent(broker.port, agent_settings={"alert_consecutive": 3})
    plc = Client(broker.port, client_id="plc-state")
    try:
        ask(plc, "fit_ok", mm_per_px=0.2, images=[b64(p) for p in ok_pngs[:3]])
        roi_topic = f"{PREFIX}/roi/Inspection/Inspection_1"
        _, state, _ = plc.wait_for(lambda t, b: t == f"{roi_topic}/state")[-1]
        assert state["fitted"] is True and state["calibrated"] is False
        ask(plc, "calibrate_ng", ok_scores=[0.0], ng_scores=[])  # everything is anomalous
        plc.wait_for(lambda t, b: t == f"{roi_topic}/state" and b["calibrated"])
        for _ in range(4):
            reply = ask(plc, "infer", mm_per_px=0.2, image=b64(ok_pngs[5]), heatmap=False)
            assert reply["is_anomaly"] is True
        last = plc.wait_for(lambda t, b: t == f"{roi_topic}/last", count=4)
        assert len(json.dumps(last[-1][1])) < 1024 and "heatmap_png_base64" not in last[-1][1]
        assert last[-1][1]["is_anomaly"] is True and last[-1][1]["n_regions"] >= 1
        ask(plc, "calibrate_ng", ok_scores=[100.0])  # now nothing is
        ask(plc, "infer", mm_per_px=0.2, image=b64(ok_pngs[5]), heatmap=False)
        alerts = plc.wait_for(lambda t, b: t == f"{roi_topic}/alert", count=2)
        kinds = [body["kind"] for _, body, _ in alerts]
        assert kinds == ["consecutive_anomalies", "cleared"]  # one alert for a run of 4
        assert alerts[0][1]["count"] == 3
        retained = Client(
            broker.port, client_id="late-reader", subscribe=(f"{roi_topic}/#", f"{PREFIX}/status")
        )
        try:
            retained.wait_for(lambda t, b: t == f"{roi_topic}/state")
            retained.wait_for(lambda t, b: t == f"{PREFIX}/status" and b == "online")
        finally:
            retained.close()
    finally:
        plc.close()


def test_stats_topic_is_published(broker, mqtt_agent) -> None:
    mqtt_agent(broker.port, stats_interval_s=0.3)
    reader = Client(broker.port, client_id="stats-reader", subscribe=(f"{PREFIX}/stats",))
    try:
        _, stats, _ = reader.wait_for(lambda t, b: t == f"{PREFIX}/stats", timeout=10)[0]
        assert {
            "queue_size",
            "infer_p50_ms",
            "infer_p95_ms",
            "counts",
            "spool_size",
            "device",
            "boot_id",
        } <= set(stats)
    finally:
        reader.close()


def test_without_a_broker_the_agent_runs_and_health_says_so(mqtt_agent) -> None:
    from tests.adapters.mqtt_support import free_port

    agent, _ = mqtt_agent(free_port(), wait=False)
    wait_connected(agent, state="disconnected")
    health = agent.bus.health()
    assert health["mqtt"] == "disconnected" and health["status"] == "degraded"
