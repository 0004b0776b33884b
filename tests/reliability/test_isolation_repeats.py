"""Repeats over MQTT (issue 18, points 4, 5 and 6), against a real mosquitto: ``busy`` is
never the remembered answer to a request id, a repeat is the same id *and* the same
inputs, and the replies kept for repeated reads are bounded in bytes."""

# Fixtures come from tests/adapters/conftest.py.
# ruff: noqa: F811

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest

from agent.demo.discs import encode_png
from agent.parsing import parse_command
from engine.keys import RoiKey
from tests.adapters.conftest import broker, mqtt_agent  # noqa: F401
from tests.adapters.mqtt_support import Broker, Client
from tests.reliability.fault_support import wait_until
from tests.reliability.isolation_support import (
    MM,
    ROI,
    ask,
    b64,
    fit,
    replies_to,
    still_serving,
)

PREFIX = "bdi/line1"
ROI_B = {"role_id": "Inspection", "roi_id": "Inspection_2"}


@pytest.mark.reliability(
    "bad_input", "busy infer and fit_ok, then the same request ids once the queue drained"
)
def test_a_busy_reply_is_never_the_answer_to_a_retry(
    broker: Broker, mqtt_agent, ok_pngs, record_property
) -> None:
    agent, _ = mqtt_agent(broker.port, agent_settings={"queue_size": 1})
    fit(agent, ok_pngs[:3])
    plc = Client(broker.port, client_id="plc-busy")
    request = {**ROI, "request_id": "retry-me", "mm_per_px": MM, "image": b64(ok_pngs[4])}
    store = {**ROI, "request_id": "retry-fit", "mm_per_px": MM, "images": [b64(ok_pngs[7])]}
    try:
        # Another agent on the root refits this ROI: our fit waits for it, the queue fills.
        with agent.services.models.refit_lock(RoiKey.of(**ROI)):
            more = {**ROI, "mm_per_px": MM, "images": [b64(ok_pngs[6])]}
            fitting = agent.bus.submit(parse_command("fit_ok", more, "test"))
            wait_until(lambda: agent.worker.current == "fit_ok", 60, "the fit to start")
            waiting = agent.bus.submit(parse_command("manifest", ROI, "test"))
            busy = ask(plc, PREFIX, "infer", **request)
            assert busy["error"]["kind"] == "busy" and "queue full" in busy["error"]["message"]
            # A mutating command's busy must not reach the journal either.
            busy_fit = ask(plc, PREFIX, "fit_ok", **store)
            assert busy_fit["error"]["kind"] == "busy", busy_fit
        assert fitting.result(120).ok and waiting.result(120).ok
        plc.publish(f"{PREFIX}/cmd/infer", request)
        retried = replies_to(plc, "retry-me", count=2)[1]
        assert retried["ok"] and isinstance(retried["score"], float), retried
        assert retried["seq"] > busy["seq"]
        plc.publish(f"{PREFIX}/cmd/fit_ok", store)
        stored = replies_to(plc, "retry-fit", count=2)[1]
        assert stored["ok"] and stored["ok_added"] == 1, stored
        listing = ask(plc, PREFIX, "dataset_list", **ROI, label="ok")
        assert listing["datasets"]["ok"]["count"] == 5  # 3 + the fit's 1 + the retry's 1
    finally:
        plc.close()
    record_property("tried", 4)
    record_property("failures", 0)
    record_property(
        "detail", "infer and fit_ok busy while the queue was full; each retry with its id was run"
    )


@pytest.mark.reliability("bad_input", "one request id reused for fit_ok and infer on another ROI")
def test_a_reused_request_id_is_not_a_repeat_of_another_request(
    broker: Broker, mqtt_agent, ok_pngs, record_property
) -> None:
    agent, adapter = mqtt_agent(broker.port)
    plc = Client(broker.port, client_id="plc-reuse")
    images = [b64(p) for p in ok_pngs[:3]]
    try:
        first = ask(plc, PREFIX, "fit_ok", request_id="fit-x", **ROI, mm_per_px=MM, images=images)
        assert first["ok"] and first["ok_added"] == 3
        again = ask(plc, PREFIX, "fit_ok", request_id="fit-x", **ROI, mm_per_px=MM, images=images)
        assert again["model_version"] == first["model_version"]  # the true repeat: replayed
        other = ask(plc, PREFIX, "fit_ok", request_id="fit-x", **ROI_B, mm_per_px=MM, images=images)
        assert other["error"]["kind"] == "bad_request", other
        assert "already used" in other["error"]["message"]
        listing = ask(plc, PREFIX, "dataset_list", **ROI_B, label="ok")
        assert listing["datasets"]["ok"]["count"] == 0  # nothing stored for B under A's answer
        fit(agent, ok_pngs[3:6], ROI_B)
        image = b64(ok_pngs[7])
        a = ask(plc, PREFIX, "infer", request_id="inf-x", **ROI, mm_per_px=MM, image=image)
        b = ask(plc, PREFIX, "infer", request_id="inf-x", **ROI_B, mm_per_px=MM, image=image)
        assert (a["roi_id"], b["roi_id"]) == (ROI["roi_id"], ROI_B["roi_id"])
        assert b["seq"] > a["seq"] and b["model_version"] != a["model_version"]
        # The true repeat of the first infer is answered with its first reply.
        plc.publish(
            f"{PREFIX}/cmd/infer",
            {"request_id": "inf-x", **ROI, "mm_per_px": MM, "image": image},
        )
        repeats = plc.wait_for(
            lambda t, b: t.endswith("/result/infer") and b.get("seq") == a["seq"], count=2
        )
        assert json.dumps(repeats[0][1]) == json.dumps(repeats[1][1])
        still_serving(plc, adapter, PREFIX, ok_pngs[5])
    finally:
        plc.close()
    record_property("tried", 5)
    record_property("failures", 0)
    record_property("detail", "fit_ok reuse refused, infer reuse run anew, true repeats replayed")


def _big_crop(png: bytes, side: int) -> bytes:
    image = cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_COLOR)
    return encode_png(cv2.resize(image, (side, side), interpolation=cv2.INTER_CUBIC))


@pytest.mark.reliability("load", "replies kept for repeated reads, capped in bytes")
def test_replies_kept_for_repeats_stay_within_their_byte_cap(
    broker: Broker, mqtt_agent, ok_pngs, record_property
) -> None:
    cap = 400_000
    agent, adapter = mqtt_agent(broker.port, repeat_cache_bytes=cap)
    fit(agent, ok_pngs[:3])
    plc = Client(broker.port, client_id="plc-cap")
    crops = [_big_crop(p, 1024) for p in ok_pngs[3:5]]
    sizes: list[int] = []
    try:
        first: dict = {}
        for i in range(10):
            reply = ask(
                plc,
                PREFIX,
                "infer",
                request_id=f"cap-{i}",
                **ROI,
                mm_per_px=MM,
                image=b64(crops[i % 2]),
            )
            assert reply["ok"] and "heatmap_png_base64" in reply
            first[f"cap-{i}"] = reply
            sizes.append(len(json.dumps(reply)))
        assert sum(sizes) > cap  # else nothing would have to go
        assert adapter.outbox.drain(30) and adapter.repeats.total_bytes <= cap
        newest = ask(
            plc, PREFIX, "infer", request_id="cap-9", **ROI, mm_per_px=MM, image=b64(crops[1])
        )
        assert newest["seq"] == first["cap-9"]["seq"]  # kept: answered again, not run
        oldest = ask(
            plc, PREFIX, "infer", request_id="cap-0", **ROI, mm_per_px=MM, image=b64(crops[0])
        )
        assert oldest["ok"] and oldest["seq"] > newest["seq"]  # pushed out: run again
        assert adapter.outbox.drain(30) and adapter.repeats.total_bytes <= cap
    finally:
        plc.close()
    record_property("tried", 12)
    record_property("failures", 0)
    record_property(
        "detail",
        f"10 replies of ~{sum(sizes) // len(sizes) // 1000} KB, store capped at {cap // 1000} KB "
        f"(held {adapter.repeats.total_bytes // 1000} KB); evicted repeats run again",
    )
