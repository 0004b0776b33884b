"""``infer_batch`` within bounds (issue 18, point 7), against a real mosquitto: caps on
items and total pixels answered ``payload_too_large``, every item's heatmap within
``heatmap_max_bytes``, and single infers served between a batch's chunks."""

# Fixtures come from tests/adapters/conftest.py.
# ruff: noqa: F811

from __future__ import annotations

import base64
import threading

import pytest

from agent.parsing import parse_command
from tests.adapters.conftest import broker, mqtt_agent  # noqa: F401
from tests.adapters.mqtt_support import Broker, Client
from tests.reliability.fault_support import wait_until
from tests.reliability.isolation_support import MM, ROI, ask, b64, fit, still_serving

PREFIX = "bdi/line1"
SIDE = 224  # the fixtures' discs: 224 x 224 = 50 176 pixels each


def items(pngs: list[bytes], heatmap: bool = False) -> list[dict]:
    return [{**ROI, "mm_per_px": MM, "image": b64(p), "heatmap": heatmap} for p in pngs]


@pytest.mark.reliability("bad_input", "infer_batch over its item and pixel caps, heatmaps capped")
def test_batches_over_their_caps_are_refused_and_heatmaps_fit(
    broker: Broker, mqtt_agent, ok_pngs, record_property
) -> None:
    limits = {"max_batch_items": 4, "max_batch_pixels": 3 * SIDE * SIDE - 1}
    agent, adapter = mqtt_agent(broker.port, heatmap_max_bytes=1024, agent_settings=limits)
    fit(agent, ok_pngs[:3])
    plc = Client(broker.port, client_id="plc-batch")
    try:
        many = ask(plc, PREFIX, "infer_batch", items=items(ok_pngs[3:8]))
        assert many["error"]["kind"] == "payload_too_large", many
        assert "max_batch_items" in many["error"]["message"]
        big = ask(plc, PREFIX, "infer_batch", items=items(ok_pngs[3:6]))
        assert big["error"]["kind"] == "payload_too_large", big
        assert "max_batch_pixels" in big["error"]["message"]
        fits = ask(plc, PREFIX, "infer_batch", items=items(ok_pngs[3:5], heatmap=True))
        assert [item["ok"] for item in fits["results"]] == [True, True]
        for item in fits["results"]:
            assert len(base64.b64decode(item["heatmap_png_base64"])) <= 1024
            assert 0 < item["heatmap_scale"] < 1  # it says the heatmap was downscaled
        still_serving(plc, adapter, PREFIX, ok_pngs[5])
    finally:
        plc.close()
    record_property("tried", 3)
    record_property("failures", 0)
    record_property("detail", "5 items and 3 x 50k px over 4 items / 150k px refused (413)")


@pytest.mark.reliability("load", "a single infer sent while a 16-item batch runs")
def test_an_infer_sent_during_a_batch_is_served_before_the_batch_ends(
    make_agent, ok_pngs, record_property
) -> None:
    agent = make_agent(max_batch=1, max_batch_items=16)
    fit(agent, ok_pngs[:3])
    finished: list[str] = []
    lock = threading.Lock()

    def note(name: str):
        def done(_future) -> None:
            with lock:
                finished.append(name)

        return done

    batch = {"items": items([ok_pngs[3 + i % 8] for i in range(16)])}
    batch_future = agent.bus.submit(parse_command("infer_batch", batch, "test"))
    batch_future.add_done_callback(note("batch"))
    wait_until(lambda: agent.worker.current == "infer_batch", 60, "the batch to start")
    single = {**ROI, "mm_per_px": MM, "image": b64(ok_pngs[2]), "heatmap": False}
    infer_future = agent.bus.submit(parse_command("infer", single, "test"))
    infer_future.add_done_callback(note("infer"))
    assert infer_future.result(120).ok and batch_future.result(300).ok
    assert len(batch_future.result().body["results"]) == 16
    record_property("tried", 17)
    record_property("failures", 0 if finished[0] == "infer" else 1)
    record_property("detail", f"finished in order: {', '.join(finished)}")
    assert finished == ["infer", "batch"]
