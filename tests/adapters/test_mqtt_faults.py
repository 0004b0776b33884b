"""MQTT under faults: broker killed, agent killed, shared groups, authentication."""

from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from adapters.mqtt.spool import Spool, spool_folder
from tests.adapters.conftest import wait_connected
from tests.adapters.mqtt_support import Broker, Client
from tests.support import ROOT, cli_env

ROI = {"role_id": "Inspection", "roi_id": "Inspection_1"}


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def results(client: Client, topic: str) -> list[dict]:
    with client._cond:
        return [b for t, b, _ in client.messages if t == topic and isinstance(b, dict)]


@pytest.mark.reliability("fault", "broker SIGKILL and restart mid-burst of 200 infers")
def test_broker_killed_mid_burst_loses_and_duplicates_nothing(
    fresh_broker: Broker, mqtt_agent, ok_pngs, record_property
) -> None:
    agent, _ = mqtt_agent(fresh_broker.port, agent_settings={"queue_size": 256})
    plc = Client(
        fresh_broker.port, client_id="plc-burst", persistent=True, subscribe=("bdi/line1/result/#",)
    )
    wanted = {f"burst-{i}" for i in range(200)}

    def request(request_id: str) -> None:
        plc.publish(
            "bdi/line1/cmd/infer",
            {**ROI, "request_id": request_id, "mm_per_px": 0.2, "image": image, "heatmap": False},
        )

    def answered() -> set[str]:
        return {b["request_id"] for b in results(plc, "bdi/line1/result/infer")} & wanted

    try:
        plc.publish(
            "bdi/line1/cmd/fit_ok",
            {**ROI, "request_id": "fit", "mm_per_px": 0.2, "images": [b64(p) for p in ok_pngs[:3]]},
        )
        plc.reply("fit")
        image = b64(ok_pngs[4])
        for request_id in sorted(wanted):
            request(request_id)
        plc.wait_for(lambda t, b: b.get("request_id") in wanted, count=20)
        fresh_broker.kill()
        time.sleep(1.0)
        fresh_broker.start()
        # Like a PLC: wait for replies to stop coming, then retry what is unanswered with
        # the same request id. mosquitto acknowledges QoS 1 messages before it persists
        # them, so a SIGKILL can lose a few the broker had already accepted.
        retried: set[str] = set()
        previous, quiet_s = -1, 0
        for _ in range(180):
            time.sleep(1.0)
            count = len(answered())
            if count == len(wanted):
                break
            quiet_s = quiet_s + 1 if count == previous else 0
            previous = count
            if quiet_s >= 5:  # the PLC's timeout: nothing new for 5 s
                missing = wanted - answered()
                retried |= missing
                for request_id in missing:
                    request(request_id)
                quiet_s = 0
        time.sleep(1.0)  # anything duplicated would arrive now
        replies = results(plc, "bdi/line1/result/infer")
        record_property("tried", len(wanted))
        record_property("lost", len(wanted - answered()))
        record_property(
            "detail",
            f"every infer answered, {len(retried)} retried by the PLC after the broker's loss",
        )
        assert answered() == wanted, f"unanswered: {sorted(wanted - answered())}"
        # The agent made one reply per request: a repeat in the stream (QoS 1 redelivery,
        # or the answer to a retry) is the very same message, same seq.
        seqs: dict[str, set[int]] = {}
        for body in replies:
            seqs.setdefault(body["request_id"], set()).add(body["seq"])
        assert all(len(s) == 1 for s in seqs.values())
        served = agent.bus.stats.outcomes["infer:ok"] + agent.bus.stats.outcomes["infer:busy"]
        assert served == 200, "no request was run twice"
        print(
            json.dumps(
                {
                    "retried_after_broker_loss": len(retried),
                    "stream_repeats": len(replies) - len(seqs),
                }
            )
        )
    finally:
        plc.close()


@pytest.mark.reliability("fault", "broker down: verdicts spooled to disk, sent in order")
def test_replies_made_during_an_outage_are_spooled_then_sent_in_order(
    fresh_broker: Broker, mqtt_agent, ok_pngs, record_property
) -> None:
    agent, adapter = mqtt_agent(fresh_broker.port)
    reader = Client(
        fresh_broker.port, client_id="reader", persistent=True, subscribe=("bdi/line1/roi/#",)
    )
    try:
        from agent.parsing import parse_command

        fit = parse_command(
            "fit_ok", {**ROI, "mm_per_px": 0.2, "images": [b64(p) for p in ok_pngs[:3]]}, "test"
        )
        assert agent.bus.execute(fit).ok
        fresh_broker.kill()
        wait_connected(agent, state="disconnected")
        for png in ok_pngs[3:8]:
            infer = parse_command(
                "infer", {**ROI, "mm_per_px": 0.2, "image": b64(png), "heatmap": False}, "http"
            )
            assert agent.bus.execute(infer).ok
        assert adapter.outbox.drain(timeout=30)  # the verdicts are published off the worker
        assert adapter.spool.size >= 5 and agent.bus.health()["status"] == "degraded"
        fresh_broker.start()
        wait_connected(agent)
        last = reader.wait_for(lambda t, b: t.endswith("/last"), count=5, timeout=60)
        seqs = [body["seq"] for _, body, _ in last]
        published = len(set(seqs))  # a QoS 1 repeat after the reconnect is the same seq
        record_property("tried", 5)
        record_property("lost", 5 - published)
        record_property("detail", f"{published} verdicts of the outage published, in order")
        assert seqs == sorted(seqs) and adapter.spool.size == 0
    finally:
        reader.close()


def start_agent(env: dict[str, str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "agent", "run"],
        env=env,
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


@pytest.mark.reliability("fault", "agent SIGKILL: Last Will offline, spool sent on restart")
def test_agent_killed_gets_offline_then_flushes_its_spool(
    fresh_broker: Broker, tmp_path, record_property
) -> None:
    data = tmp_path / "data"
    spool = Spool(data / "spool" / "mqtt", 1 << 20)  # the older layout, shared by all agents
    for i in range(3):  # what a killed agent left behind
        spool.append("bdi/line9/result/infer", json.dumps({"n": i}).encode(), expiry_s=300)
    env = cli_env(
        data, BDI_MQTT__ENABLED="true", BDI_MQTT__PORT=str(fresh_broker.port), BDI_AGENT_ID="line9"
    )
    watcher = Client(
        fresh_broker.port, client_id="watcher", subscribe=("bdi/line9/status", "bdi/line9/result/#")
    )
    proc = start_agent(env)
    try:
        watcher.wait_for(lambda t, b: t.endswith("/status") and b == "online", timeout=60)
        flushed = watcher.wait_for(lambda t, b: t.endswith("/result/infer"), count=3)
        assert [b["n"] for _, b, _ in flushed] == [0, 1, 2]
        record_property("tried", 3)
        record_property("lost", 0)
        record_property("detail", "3 spooled replies of a killed agent sent, offline retained")
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
        watcher.wait_for(lambda t, b: t.endswith("/status") and b == "offline", timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
        watcher.close()
    late = Client(fresh_broker.port, client_id="late", subscribe=("bdi/line9/status",))
    try:
        late.wait_for(lambda t, b: b == "offline")  # retained
    finally:
        late.close()
    proc = start_agent(env)
    try:
        late = Client(fresh_broker.port, client_id="late2", subscribe=("bdi/line9/status",))
        late.wait_for(lambda t, b: b == "online", timeout=60)
        late.close()
        # The shared layout's files were taken over by the agent, and sent.
        assert Spool(spool_folder(data, "line9"), 1 << 20).size == 0
        assert not list((data / "spool" / "mqtt").glob("*.json"))
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0


def test_two_agents_in_a_shared_group_answer_each_infer_once(
    broker: Broker, mqtt_agent, ok_pngs, tmp_path: Path
) -> None:
    root = tmp_path / "shared"
    one, _ = mqtt_agent(
        broker.port,
        agent_id="a1",
        data_root=root,
        shared_group="g",
        agent_settings={"queue_size": 256},
    )
    two, _ = mqtt_agent(
        broker.port,
        agent_id="a2",
        data_root=root,
        shared_group="g",
        agent_settings={"queue_size": 256},
    )
    plc = Client(broker.port, client_id="plc-pool", subscribe=("bdi/g/result/#", "bdi/a1/result/#"))
    try:
        plc.publish(
            "bdi/a1/cmd/fit_ok",
            {**ROI, "request_id": "fit", "mm_per_px": 0.2, "images": [b64(p) for p in ok_pngs[:3]]},
        )
        plc.reply("fit")
        image = b64(ok_pngs[5])
        for i in range(200):
            plc.publish(
                "bdi/g/cmd/infer",
                {
                    **ROI,
                    "request_id": f"pool-{i}",
                    "mm_per_px": 0.2,
                    "image": image,
                    "heatmap": False,
                },
            )
        plc.wait_for(lambda t, b: t == "bdi/g/result/infer", count=200, timeout=180)
        time.sleep(0.5)
        ids = Counter(b["request_id"] for b in results(plc, "bdi/g/result/infer"))
        assert len(ids) == 200 and max(ids.values()) == 1
        served = [a.bus.stats.outcomes["infer:ok"] for a in (one, two)]
        assert sum(served) == 200 and min(served) > 0
    finally:
        plc.close()


@pytest.mark.reliability("security", "MQTT password file: a wrong password never connects")
def test_credentials_are_checked(tmp_path: Path, mqtt_agent, record_property) -> None:
    passwords = tmp_path / "passwd"
    subprocess.run(
        ["mosquitto_passwd", "-b", "-c", str(passwords), "line", "s3cret"],
        check=True,
        capture_output=True,
    )
    os.chmod(passwords, 0o644)
    secured = Broker(
        tmp_path / "secured", extra_conf=f"allow_anonymous false\npassword_file {passwords}\n"
    )
    secured.start()
    try:
        wrong, _ = mqtt_agent(
            secured.port, agent_id="w", wait=False, username="line", password="nope"
        )
        time.sleep(2)
        assert wrong.bus.health()["mqtt"] == "disconnected"
        right, _ = mqtt_agent(secured.port, agent_id="r", username="line", password="s3cret")
        assert right.bus.health()["mqtt"] == "connected"
        record_property("tried", 2)
        record_property("failures", 0)
        record_property("detail", "wrong password stays disconnected, the right one connects")
    finally:
        secured.stop()
