"""Every command through the bus, with the real engine and real files."""

from __future__ import annotations

import base64
from pathlib import Path

import cv2
import numpy as np
import pytest

from agent.bootstrap import Agent
from agent.demo.discs import encode_png
from agent.errors import AgentError
from agent.parsing import parse_command
from agent.replies import Reply

ROI = {"role_id": "Inspection", "roi_id": "Inspection_1"}


def send(agent: Agent, name: str, **payload) -> Reply:
    cmd = parse_command(name, {**ROI, **payload} if name != "health" else payload, "test")
    return agent.bus.execute(cmd, timeout=120)


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


@pytest.fixture
def fitted(make_agent, ok_pngs) -> Agent:
    agent = make_agent()
    reply = send(agent, "fit_ok", mm_per_px=0.2, images=[b64(p) for p in ok_pngs[:8]])
    assert reply.ok, reply.to_dict()
    return agent


def test_health_reports_the_model_and_weights(make_agent) -> None:
    body = send(make_agent(), "health").to_dict()
    assert body["status"] == "ok" and body["weights"] == "random"
    assert body["device"] == "cpu" and body["mqtt"] == "disabled" and body["queue_size"] == 0
    assert body["model"] == "vit_small_patch14_dinov2.lvd142m"
    assert body["request_id"] and body["recipe_id"] == "default"


def test_fit_ok_stores_samples_and_accumulates(fitted: Agent, ok_pngs) -> None:
    second = send(
        fitted,
        "fit_ok",
        mm_per_px=0.2,
        images=[b64(p) for p in ok_pngs[8:10]],
        request_id="fit-2",
        recipe_id="default",
    ).to_dict()
    assert second["ok_added"] == 2 and second["n_samples"] == 10
    assert second["n_embeddings"] > 0 and second["coreset_size"] > 0
    assert second["token_shape"] == [16, 16] and second["request_id"] == "fit-2"
    assert second["coreset_rate_requested"] == 0.02
    assert all(Path(s["file"]).is_file() and Path(s["meta"]).is_file() for s in second["samples"])
    only_store = send(
        fitted, "fit_ok", mm_per_px=0.2, images=[b64(ok_pngs[10])], memory_fit="false"
    ).to_dict()
    assert only_store["ok_added"] == 1 and "model_version" not in only_store
    manifest = send(fitted, "manifest").to_dict()
    assert manifest["memory"]["model_version"] == second["model_version"]
    assert manifest["datasets"] == {"ok": 11, "ng": 0}


def test_infer_calibrate_and_decide(fitted: Agent, test_discs) -> None:
    ok_disc = next(d for d in test_discs if d.kind == "ok")
    raw = send(fitted, "infer", mm_per_px=0.2, image=b64(encode_png(ok_disc.image))).to_dict()
    assert raw["threshold"] is None and raw["is_anomaly"] is None and raw["regions"] == []
    heatmap = cv2.imdecode(
        np.frombuffer(base64.b64decode(raw["heatmap_png_base64"]), np.uint8), cv2.IMREAD_UNCHANGED
    )
    assert heatmap.shape == ok_disc.image.shape[:2]
    assert raw["inference_ms"] > 0 and raw["token_shape"] == [16, 16]

    ng = [b64(encode_png(d.image)) for d in test_discs if d.kind == "rust"]
    assert send(fitted, "add_ng", mm_per_px=0.2, images=ng).to_dict()["ng_added"] == 2
    calibration = send(fitted, "calibrate_ng").to_dict()
    assert calibration["threshold"] > 0 and calibration["p5_ng"] is not None
    assert calibration["ok_mean"] < calibration["ng_mean"]

    rust = next(d for d in test_discs if d.kind == "rust")
    verdict = send(
        fitted, "infer", mm_per_px=0.2, image=b64(encode_png(rust.image)), heatmap=False
    ).to_dict()
    assert verdict["threshold"] == calibration["threshold"]
    assert verdict["is_anomaly"] is True and verdict["regions"]
    assert "heatmap_png_base64" not in verdict
    region = verdict["regions"][0]
    assert region["area_mm2"] == pytest.approx(region["area_px"] * 0.04)


def test_calibrate_with_given_scores(fitted: Agent) -> None:
    body = send(fitted, "calibrate_ng", ok_scores=[0.2, 0.1], ng_scores=[0.9, 1.0]).to_dict()
    assert body["threshold"] == pytest.approx((body["p99_ok"] + body["p5_ng"]) / 2)
    # The stored calibration keeps the scores (for the console's histograms), the reply not.
    assert "ok_scores" not in body and "ng_scores" not in body
    stored = send(fitted, "manifest").to_dict()["calibration"]
    assert stored["ok_scores"] == [0.1, 0.2] and stored["ng_scores"] == [0.9, 1.0]
    # A long list is thinned evenly over its sorted values, both ends kept.
    many = [i / 5000 for i in range(5000)]
    send(fitted, "calibrate_ng", ok_scores=many[::-1], ng_scores=[2.0])
    kept = send(fitted, "manifest").to_dict()["calibration"]["ok_scores"]
    assert len(kept) == 2000 and kept == sorted(kept) and (kept[0], kept[-1]) == (0.0, 0.9998)


def test_infer_batch_keeps_order_and_isolates_failures(fitted: Agent, test_discs) -> None:
    images = [b64(encode_png(d.image)) for d in test_discs[:3]]
    items = [{**ROI, "mm_per_px": 0.2, "image": image, "heatmap": False} for image in images]
    items.insert(1, {**ROI, "roi_id": "unknown", "mm_per_px": 0.2, "image": images[0]})
    body = send(fitted, "infer_batch", items=items).to_dict()
    results = body["results"]
    assert [r["ok"] for r in results] == [True, False, True, True]
    assert results[1]["error"]["kind"] == "not_fitted"
    single = send(fitted, "infer", mm_per_px=0.2, image=images[2], heatmap=False).to_dict()
    assert results[3]["score"] == pytest.approx(single["score"], rel=1e-5)


def test_dataset_list_delete_clear(fitted: Agent) -> None:
    listing = send(fitted, "dataset_list", label="ok").to_dict()
    assert listing["datasets"]["ok"]["count"] == 8
    name = listing["datasets"]["ok"]["files"][0]["file"]
    assert send(fitted, "dataset_delete", label="ok", file=name).to_dict()["deleted"] == 1
    assert send(fitted, "dataset_clear", label="ok").to_dict()["deleted"] == 7
    assert send(fitted, "dataset_list").to_dict()["datasets"]["ok"]["count"] == 0


@pytest.mark.parametrize(
    ("name", "payload", "kind"),
    [
        ("infer", {"mm_per_px": 0.2}, "bad_request"),
        ("infer", {"mm_per_px": -1, "image": "AAAA"}, "bad_request"),
        ("infer", {"mm_per_px": 0.2, "image": "not base64!"}, "bad_request"),
        ("infer", {"mm_per_px": 0.2, "image": "AAAA", "shape": {"kind": "circle"}}, "bad_request"),
        ("fit_ok", {"mm_per_px": 0.2, "images": []}, "bad_request"),
        ("fit_ok", {"mm_per_px": "x", "images": ["AAAA"]}, "bad_request"),
        ("manifest", {"recipe_id": "last"}, "bad_request"),
        ("dataset_clear", {"label": "maybe"}, "bad_request"),
        ("nonsense", {}, "bad_request"),
    ],
)
def test_bad_input_is_refused_with_the_field_named(name, payload, kind) -> None:
    with pytest.raises(AgentError) as raised:
        parse_command(name, {**ROI, **payload}, "test")
    assert raised.value.kind == kind and raised.value.code == 400


def test_engine_errors_map_to_the_contract(fitted: Agent, make_agent, ok_pngs) -> None:
    image = b64(ok_pngs[0])

    def kind_of(reply: Reply) -> tuple[str, int]:
        body = reply.to_dict()["error"]
        return body["kind"], body["code"]

    assert kind_of(send(fitted, "infer", mm_per_px=0.2, image=image, roi_id="new")) == (
        "not_fitted",
        400,
    )
    assert kind_of(send(fitted, "calibrate_ng", roi_id="new")) == ("not_fitted", 400)
    wide = encode_png(np.zeros((224, 112, 3), np.uint8))
    assert kind_of(send(fitted, "infer", mm_per_px=0.2, image=b64(wide))) == ("token_mismatch", 400)
    assert kind_of(send(fitted, "infer", mm_per_px=0.25, image=image)) == ("scale_mismatch", 409)
    assert kind_of(send(fitted, "fit_ok", mm_per_px=0.3, images=[image])) == ("scale_mismatch", 409)
    assert kind_of(send(fitted, "infer", mm_per_px=0.2, image=image, require_calibration=True)) == (
        "not_calibrated",
        428,
    )
    small = make_agent(data_root=fitted.settings.data_root / "small", max_image_bytes=2048)
    assert kind_of(send(small, "fit_ok", mm_per_px=0.2, images=[image])) == (
        "payload_too_large",
        413,
    )
    assert kind_of(send(fitted, "infer", mm_per_px=0.2, image=b64(b"text"))) == ("bad_request", 400)
    bad = b64(b"\x89PNG\r\n\x1a\n" + b"\x00" * 40)
    reply = send(fitted, "fit_ok", mm_per_px=0.2, images=[image, bad])
    assert kind_of(reply) == ("bad_request", 400) and "images[1]" in reply.error.message
    assert send(fitted, "manifest").to_dict()["datasets"]["ok"] == 8  # nothing stored


def test_model_not_loaded_answers_busy_with_the_reason(make_agent, ok_pngs) -> None:
    agent = make_agent()
    agent.services.model_state = "error"
    agent.services.model_error = "weights file x.pth not found; provide DINOv2 weights"
    reply = send(agent, "infer", mm_per_px=0.2, image=b64(ok_pngs[0]))
    assert reply.error is not None and reply.error.kind == "busy"
    assert "provide DINOv2 weights" in reply.error.message
    health = send(agent, "health")
    assert health.error is not None and health.error.code == 503
    assert health.body is not None and health.body["status"] == "error"
    assert send(agent, "manifest").ok  # commands that need no model still work
