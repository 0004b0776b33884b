"""A repeat is recognised by the whole request, on every adapter (issue 14, item 6).

One ``request_id`` on infers for two ROIs gets two verdicts, each of its own ROI and the
same as with fresh ids, over MQTT and over HTTP. A mutating command repeated with its id
and the same inputs gets its first result and is not applied again; the same id with other
inputs is a ``bad_request`` saying the id was used for another request. In the inbox, a
file dropped again with the same sidecar ``request_id`` is answered with its first result.
All against a real mosquitto, a real uvicorn server and real files.
"""

# Fixtures come from tests/adapters/conftest.py and tests/adapters/test_http_support.py.
# ruff: noqa: F811

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from agent.bootstrap import Agent
from agent.parsing import parse_command
from tests.adapters.conftest import agents, broker, extractor112, mqtt_agent  # noqa: F401
from tests.adapters.mqtt_support import Broker, Client
from tests.adapters.test_folders_support import (
    FolderAgents,
    discs,
    drop,
    processed,
    read_json,
    wait_for,
)
from tests.adapters.test_folders_support import fit as fit_folder
from tests.adapters.test_http_support import FORM, Server, files, image, serve  # noqa: F401
from tests.reliability.isolation_support import MM, ROI, ask, b64, fit

PREFIX = "bdi/line1"
ROI_B = {"role_id": "Inspection", "roi_id": "Inspection_2"}
REUSED = "was already used for another"  # the refusal's words


def fresh_score(agent: Agent, roi: dict[str, str], png: bytes) -> float:
    """The ROI's score for ``png`` under a request id of its own."""
    payload = {**roi, "mm_per_px": MM, "image": b64(png), "heatmap": False}
    reply = agent.bus.execute(parse_command("infer", payload, "test"), timeout=120)
    assert reply.ok and reply.body is not None, reply.to_dict()
    return float(reply.body["score"])


def listing(agent: Agent, roi: dict[str, str], label: str) -> int:
    payload = {**roi, "label": label}
    reply = agent.bus.execute(parse_command("dataset_list", payload, "test"), timeout=120)
    assert reply.ok and reply.body is not None, reply.to_dict()
    return int(reply.body["datasets"][label]["count"])


@pytest.mark.reliability("bad_input", "MQTT: one request id on 2 ROIs; add_ng repeated, reused")
def test_mqtt_repeats_are_the_same_request_not_the_same_id(
    broker: Broker, mqtt_agent, ok_pngs, record_property
) -> None:
    agent, _ = mqtt_agent(broker.port)
    fit(agent, ok_pngs[:3])
    fit(agent, ok_pngs[3:6], ROI_B)
    png = ok_pngs[8]
    expected = {ROI["roi_id"]: fresh_score(agent, ROI, png)}
    expected[ROI_B["roi_id"]] = fresh_score(agent, ROI_B, png)
    assert expected[ROI["roi_id"]] != expected[ROI_B["roi_id"]]  # else the test proves nothing
    plc = Client(broker.port, client_id="plc-every")
    try:
        verdicts = [
            ask(plc, PREFIX, "infer", request_id="part-1", **roi, mm_per_px=MM, image=b64(png))
            for roi in (ROI, ROI_B)
        ]
        for roi, verdict in zip((ROI, ROI_B), verdicts, strict=True):
            assert verdict["ok"] and verdict["roi_id"] == roi["roi_id"], verdict
            assert verdict["score"] == pytest.approx(expected[roi["roi_id"]], rel=1e-4)

        ng = {**ROI, "mm_per_px": MM, "images": [b64(ok_pngs[9])]}
        first = ask(plc, PREFIX, "add_ng", request_id="ng-1", **ng)
        assert first["ok"] and first["ng_added"] == 1, first
        # Take the sample away: applied again, the repeat would store it anew.
        stored = Path(first["samples"][0]["file"]).name
        gone = ask(plc, PREFIX, "dataset_delete", **ROI, label="ng", file=stored)
        assert gone["ok"] and gone["deleted"] == 1, gone
        again = ask(plc, PREFIX, "add_ng", request_id="ng-1", **ng)
        assert again["ok"] and again["samples"] == first["samples"], again
        assert listing(agent, ROI, "ng") == 0  # answered with the first result, not applied
        other = {**ng, "images": [b64(ok_pngs[10])]}
        refused = ask(plc, PREFIX, "add_ng", request_id="ng-1", **other)
        assert refused["error"]["kind"] == "bad_request", refused
        assert "ng-1" in refused["error"]["message"] and REUSED in refused["error"]["message"]
        assert listing(agent, ROI, "ng") == 0
    finally:
        plc.close()
    record_property("tried", 5)
    record_property("failures", 0)
    record_property(
        "detail", "2 ROIs under one id judged each on its own; add_ng replayed, reuse refused"
    )


def http_infer(server: Server, roi: dict[str, str], png: bytes, request_id: str) -> dict[str, Any]:
    response = server.client.post(
        "/infer",
        data={**roi, "mm_per_px": str(MM), "heatmap": "false"},
        files=image(png),
        headers={"X-Request-Id": request_id},
    )
    assert response.status_code == 200, response.json()
    return dict(response.json())


def http_fit(server: Server, pngs: list[bytes], request_id: str) -> tuple[int, dict[str, Any]]:
    response = server.client.post(
        "/fit_ok", data=FORM, files=files("images", pngs), headers={"X-Request-Id": request_id}
    )
    return response.status_code, dict(response.json())


@pytest.mark.reliability("bad_input", "HTTP: one X-Request-Id on 2 ROIs; fit_ok repeated, reused")
def test_http_repeats_are_the_same_request_not_the_same_id(serve, ok_pngs, record_property) -> None:
    server: Server = serve()
    fit(server.agent, ok_pngs[3:6], ROI_B)
    status, first = http_fit(server, ok_pngs[:3], "fit-1")
    assert status == 200 and first["ok_added"] == 3, first
    png = ok_pngs[8]
    expected = {r["roi_id"]: fresh_score(server.agent, r, png) for r in (ROI, ROI_B)}
    assert expected[ROI["roi_id"]] != expected[ROI_B["roi_id"]]
    for roi in (ROI, ROI_B):
        verdict = http_infer(server, roi, png, "gui-1")
        assert verdict["request_id"] == "gui-1" and verdict["roi_id"] == roi["roi_id"]
        assert verdict["score"] == pytest.approx(expected[roi["roi_id"]], rel=1e-4)

    status, again = http_fit(server, ok_pngs[:3], "fit-1")
    assert status == 200 and again["model_version"] == first["model_version"], again
    assert again["samples"] == first["samples"]
    assert listing(server.agent, ROI, "ok") == 3  # not stored twice
    status, refused = http_fit(server, ok_pngs[6:8], "fit-1")
    assert status == 400 and refused["error"]["kind"] == "bad_request", refused
    assert "fit-1" in refused["error"]["message"] and REUSED in refused["error"]["message"]
    assert listing(server.agent, ROI, "ok") == 3
    record_property("tried", 5)
    record_property("failures", 0)
    record_property(
        "detail", "2 ROIs under one X-Request-Id judged each on its own; fit_ok replayed, reuse 400"
    )


@pytest.fixture(scope="module")
def pngs112() -> list[bytes]:
    return discs(seed=43, n_ok=8)


@pytest.mark.reliability("bad_input", "inbox: a file dropped again with its sidecar request_id")
def test_a_file_dropped_again_with_its_request_id_gets_its_first_result(
    agents: FolderAgents, pngs112: list[bytes], record_property
) -> None:
    agent, _, published = agents.make(fit_debounce_s=60)  # no refit in the way
    data = agent.settings.data_root
    role, roi = "r", "i"
    ok = data / "inbox" / role / roi / "ok"
    sidecar = {"mm_per_px": MM, "request_id": "cam-ok-1"}
    drop(ok, "a.png", pngs112[0], sidecar)
    wait_for(lambda: len(processed(data)) == 1, 60, "the OK file handled")
    drop(ok, "a.png", pngs112[0], sidecar)  # the camera sends it again, same name
    wait_for(lambda: len(processed(data)) == 2, 60, "the second drop handled")
    results = [read_json(p) for p in processed(data)]
    assert all("error" not in r for r in results), results
    assert results[0]["samples"] == results[1]["samples"]  # the first result, again
    ids = {"role_id": role, "roi_id": roi}
    assert listing(agent, ids, "ok") == 1
    assert len(processed(data, "*.png")) == 2  # both images kept, nothing deleted

    # A read dropped again with its id is simply judged again: same verdict.
    fit_folder(agent, role, "j", pngs112[1:5])
    infer = data / "inbox" / role / "j" / "infer"
    for n in (1, 2):
        drop(infer, "part.png", pngs112[6], {"mm_per_px": MM, "request_id": "cam-part-1"})
        wait_for(lambda n=n: len(published.of("infer")) == n, 60, f"verdict {n} published")
        wait_for(lambda: not any(infer.iterdir()), 60, "the inbox emptied")
    scores = [reply.body["score"] for reply, _, _ in published.of("infer")]  # type: ignore[index]
    assert scores[0] == pytest.approx(scores[1], rel=1e-6)
    record_property("tried", 4)
    record_property("failures", 0)
    record_property("detail", "OK file re-dropped: first result, stored once; infer judged again")
