"""Issue 18 end to end: ``bdi-agent run`` with a real mosquitto and real files takes every
bad message, id, reply and inbox entry of the issue in a row, keeps answering, and stops
at SIGTERM with a clean exit.

It starts on a data root holding a ROI stored under an id with DEL by an older version
(mosquitto would drop the connection at every reconnect had its state been published), and
a spool whose head no broker takes (a wildcard topic, a file that is no JSON).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from adapters.mqtt.spool import REJECTED, spool_folder
from engine.keys import RoiKey
from engine.memory import Memory, MemoryInfo, new_model_version
from engine.store import ModelStore
from tests.adapters.mqtt_support import Broker, Client
from tests.reliability.fault_support import HttpAgent, wait_until
from tests.reliability.isolation_support import MM, ROI, ask, b64

AGENT = "gauntlet"
ROI_B = {"role_id": "Inspection", "roi_id": "Inspection_2"}
PREFIX = f"bdi/{AGENT}"


@pytest.fixture
def quick_broker(tmp_path: Path):
    server = Broker(tmp_path / "mosquitto", "allow_anonymous true\npersistence false\n")
    server.start()
    yield server
    server.stop()


def _poisoned_spool(data: Path) -> Path:
    """What an older version left at the head of this agent's spool: a reply to a wildcard
    ResponseTopic and a file that is no JSON. Returns the folder they go aside to."""
    folder = spool_folder(data, AGENT)
    folder.mkdir(parents=True)
    record = {"qos": 1, "retain": False, "spooled_at": 0, "expiry_s": None, "correlation": None}
    wildcard = {**record, "topic": "replies/#", "payload": "{}"}
    (folder / f"{1:020d}.json").write_text(json.dumps(wildcard))
    (folder / f"{2:020d}.json").write_bytes(b"{not json")
    return folder / REJECTED


def _stored_under_a_bad_id(data: Path) -> None:
    info = MemoryInfo(
        model_version=new_model_version(),
        created_at="2026-01-01T00:00:00Z",
        mm_per_px=MM,
        n_embeddings=8,
        coreset_size=4,
        coreset_rate_requested=0.5,
        coreset_rate_applied=0.5,
        ok_scale=0.3,
    )
    memory = Memory(np.ones((4, 384), np.float16), np.zeros(4, np.int32), (2, 2), info)
    ModelStore(data / "models").save_memory(RoiKey("bad\x7f", "z"), memory)


def _busy_then_retried(agent: HttpAgent, watcher: Client, data: Path, infer: dict) -> str:
    """An infer answered ``busy`` while the queue is full, then retried with its request id
    once it drained: the retry must run. The queue (one place) is filled by a fit that
    waits for this ROI's refit lock, held here as another agent on the root would hold it,
    and a manifest behind it. Returns the first reply's kind."""
    with agent.client(timeout=10) as http:
        with ModelStore(data / "models").refit_lock(RoiKey.of(**ROI)):
            more = {**ROI, "request_id": "fit-2", "mm_per_px": MM, "images": [infer["image"]]}
            watcher.publish(f"{PREFIX}/cmd/fit_ok", more)
            wait_until(lambda: http.get("/train/status").json()["running"], 60, "the fit")
            watcher.publish(f"{PREFIX}/cmd/manifest", {**ROI, "request_id": "queued"})
            wait_until(lambda: http.get("/stats").json()["queue_size"] == 1, 60, "a full queue")
            first = ask(watcher, PREFIX, "infer", request_id="retry-me", **infer)
        assert watcher.reply("fit-2", timeout=120)["ok"]
        retried = ask(watcher, PREFIX, "infer", request_id="retry-me", **infer)
    assert retried["ok"] and retried["seq"] > first["seq"], retried
    return str(first.get("error", {}).get("kind", "ok"))


@pytest.mark.reliability("fault", "bdi-agent run: every poisoned input in a row, SIGTERM")
def test_the_agent_takes_every_bad_input_in_a_row_and_stops_cleanly(
    quick_broker: Broker, tmp_path: Path, ok_pngs: list[bytes], record_property
) -> None:
    data = tmp_path / "data"
    _stored_under_a_bad_id(data)
    rejected = _poisoned_spool(data)
    watcher = Client(quick_broker.port, client_id="watcher", subscribe=(f"{PREFIX}/#",))
    agent = HttpAgent(
        data,
        BDI_AGENT_ID=AGENT,
        BDI_INPUT_SIZE="112",
        BDI_MQTT__ENABLED="true",
        BDI_MQTT__PORT=str(quick_broker.port),
        BDI_FOLDERS__ENABLED="true",
        BDI_FOLDERS__SETTLE_MS="100",
        BDI_QUEUE_SIZE="1",  # for the busy reply; every other request waits for its reply
    )
    refusals: dict[str, str] = {}
    try:
        agent.wait_ready()
        watcher.wait_for(lambda t, b: t == f"{PREFIX}/status" and b == "online", timeout=60)
        # Online means the spool was flushed: its poisoned head went aside, not out.
        assert sorted(p.name for p in rejected.iterdir()) == [f"{n:020d}.json" for n in (1, 2)]
        # An operator sees them counted: the 2 spool files and the bad ROI's retained state.
        with agent.client() as http:
            wait_until(
                lambda: http.get("/stats").json()["mqtt_rejected"] == 3, 30, "3 messages rejected"
            )
            assert "\nbdi_mqtt_rejected_messages_total 3.0\n" in http.get("/metrics").text
        images = [b64(p) for p in ok_pngs[:3]]
        fitted = ask(
            watcher, PREFIX, "fit_ok", request_id="fit-1", **ROI, mm_per_px=MM, images=images
        )
        assert fitted["ok"], fitted
        image = b64(ok_pngs[4])
        infer = {**ROI, "mm_per_px": MM, "image": image, "heatmap": False}
        bad = {
            "DEL id": ("fit_ok", {**ROI, "role_id": "bad\x7f", "mm_per_px": MM, "images": images}),
            "scale 1e200": ("infer", {**infer, "mm_per_px": 1e200}),
            "polygon": (
                "infer",
                {**infer, "shape": {"kind": "polygon", "points": [[1, 2]] * 10_001}},
            ),
            "300 items": ("infer_batch", {"items": [infer] * 300}),
            "reused id": (
                "fit_ok",
                {**ROI_B, "request_id": "fit-1", "mm_per_px": MM, "images": images},
            ),
        }
        for name, (command, payload) in bad.items():
            reply = ask(watcher, PREFIX, command, **payload)
            refusals[name] = reply.get("error", {}).get("kind", "ok")
        refusals["busy, then its retry"] = _busy_then_retried(agent, watcher, data, infer)
        watcher.publish(
            f"{PREFIX}/cmd/infer", {"request_id": "rt-#", **infer}, ResponseTopic="replies/#"
        )
        refusals["ResponseTopic"] = watcher.reply("rt-#")["error"]["kind"]
        inbox = data / "inbox" / ROI["role_id"] / ROI["roi_id"] / "infer"
        inbox.mkdir(parents=True, exist_ok=True)
        (inbox / "status.png").symlink_to("/proc/self/status")
        _, link, _ = watcher.wait_for(
            lambda t, b: isinstance(b, dict) and str(b.get("path", "")).endswith("status.png")
        )[0]
        refusals["symlink"] = link["error"]["kind"]
        verdict = ask(watcher, PREFIX, "infer", **infer)
        assert verdict["ok"] and isinstance(verdict["score"], float), verdict
    finally:
        exit_code = agent.stop()
        watcher.close()
    late = Client(quick_broker.port, client_id="late", subscribe=(f"{PREFIX}/status",))
    try:
        late.wait_for(lambda t, b: b == "stopped", timeout=30)  # retained by the clean stop
    finally:
        late.close()
    record_property("tried", len(refusals))
    record_property("failures", sum(kind == "ok" for kind in refusals.values()))
    record_property(
        "detail",
        ", ".join(f"{k}: {v}" for k, v in refusals.items()) + f"; exit {exit_code} on SIGTERM",
    )
    assert refusals == {
        "DEL id": "bad_request",
        "scale 1e200": "bad_request",
        "polygon": "bad_request",
        "300 items": "payload_too_large",
        "reused id": "bad_request",
        "busy, then its retry": "busy",
        "ResponseTopic": "bad_request",
        "symlink": "bad_request",
    }
    assert exit_code == 0, agent.output()
