"""The HTTP adapter as the GUI sees it: a real uvicorn server, real HTTP, the real engine
(random weights), synthetic discs."""

# The fixtures come from test_http_support (imported below), and their names are the
# parameters of the tests: that is how pytest injects them, not a redefinition.
# ruff: noqa: F811

from __future__ import annotations

import base64
import json
import shutil
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cv2
import httpx
import numpy as np
import pytest

from agent.commands import Refit
from agent.demo.discs import encode_png
from tests.adapters.socket_options import server_connections_nodelay
from tests.adapters.test_http_support import (  # noqa: F401 (fixtures)
    FORM,
    MM_PER_PX,
    ROI,
    Server,
    assert_error,
    files,
    fitted,
    image,
    serve,
    server,
)


def curl(*args: str) -> tuple[int, dict]:
    done = subprocess.run(
        ["curl", "-sS", "-w", "\n%{http_code}", *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    body, _, code = done.stdout.rpartition("\n")
    return int(code), json.loads(body)


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
def test_seed_smoke_test_with_curl(server: Server, ok_pngs, tmp_path: Path) -> None:
    """Seed 004, section 3, word for word but for the port."""
    sample = tmp_path / "sample_ok.png"
    sample.write_bytes(ok_pngs[0])
    url = server.url
    roi = ["-F", "role_id=Smoke", "-F", "roi_id=ROI", "-F", "mm_per_px=0.2"]

    code, health = curl(f"{url}/health")
    assert code == 200 and health["status"] == "ok" and health["device"] in ("cpu", "cuda")

    code, fit = curl("-X", "POST", f"{url}/fit_ok", *roi, "-F", f"images=@{sample}")
    assert code == 200, fit
    assert fit["n_embeddings"] > 0 and fit["coreset_size"] > 0

    code, verdict = curl("-X", "POST", f"{url}/infer", *roi, "-F", f"image=@{sample}")
    assert code == 200, verdict
    assert isinstance(verdict["score"], float) and verdict["heatmap_png_base64"]
    assert verdict["regions"] == []  # present, though empty: nothing is calibrated yet


def infer(server: Server, png: bytes, **fields: str) -> dict:
    response = server.client.post("/infer", data={**FORM, **fields}, files=image(png))
    assert response.status_code == 200, response.json()
    return response.json()


def test_gui_flow_upload_fit_calibrate_infer(server: Server, ok_pngs, test_discs) -> None:
    client = server.client
    upload = client.post("/datasets/ok/upload", data=FORM, files=files("images", ok_pngs[:6]))
    assert upload.status_code == 200, upload.json()
    stored = upload.json()
    assert stored["ok_added"] == 6 and stored["memory_fit"] is False
    assert "n_embeddings" not in stored  # stored only, nothing fitted
    assert all(Path(s["file"]).parent == Path(stored["target_dir"]) for s in stored["samples"])
    listing = client.get("/datasets/list", params={**ROI, "label": "ok"}).json()
    assert listing["datasets"]["ok"]["count"] == 6

    fit = client.post(
        "/fit_ok", data={**FORM, "memory_fit": "true"}, files=files("images", ok_pngs[6:8])
    )
    assert fit.status_code == 200, fit.json()
    fitted_body = fit.json()
    assert fitted_body["ok_added"] == 2 and fitted_body["n_samples"] == 8  # accumulated
    assert fitted_body["token_shape"] == [16, 16] and fitted_body["coreset_size"] > 0
    status = client.get("/train/status").json()
    assert status["status"] == "idle" and status["last_train_ts"]
    assert status["coreset_size"] == fitted_body["coreset_size"]

    ok_discs = [d for d in test_discs if d.kind == "ok"]
    raw = [infer(server, encode_png(d.image)) for d in ok_discs]
    assert all(r["threshold"] is None and r["is_anomaly"] is None for r in raw)
    heatmap = cv2.imdecode(
        np.frombuffer(base64.b64decode(raw[0]["heatmap_png_base64"]), np.uint8),
        cv2.IMREAD_UNCHANGED,
    )
    assert heatmap.shape == ok_discs[0].image.shape[:2]

    scores = [r["score"] for r in raw]
    calibration = client.post("/calibrate_ng", json={**ROI, "ok_scores": scores})
    assert calibration.status_code == 200, calibration.json()
    threshold = calibration.json()["threshold"]
    assert min(scores) < threshold <= max(scores)

    rust = next(d for d in test_discs if d.kind == "rust")
    verdict = infer(server, encode_png(rust.image), heatmap="false")
    assert verdict["threshold"] == threshold and verdict["is_anomaly"] is True
    assert verdict["regions"] and "heatmap_png_base64" not in verdict
    for region in verdict["regions"]:
        assert region["area_mm2"] == pytest.approx(region["area_px"] * MM_PER_PX**2)
    calmest = ok_discs[int(np.argmin(scores))]
    assert infer(server, encode_png(calmest.image))["is_anomaly"] is False

    manifest = client.get("/manifest", params=ROI).json()
    assert manifest["calibration"]["threshold"] == threshold
    assert manifest["memory"]["model_version"] == fitted_body["model_version"]
    assert manifest["datasets"] == {"ok": 8, "ng": 0}


def test_legacy_routes_keep_seed_001_shapes(fitted: Server, test_discs) -> None:
    client = fitted.client
    rust = [encode_png(d.image) for d in test_discs if d.kind == "rust"]
    sent = client.post("/send_ng", data=FORM, files=files("images", rust[:1]))
    assert sent.status_code == 200, sent.json()
    body = sent.json()
    assert body["ng_added"] == 1 and body["target_dir"].endswith("ng")
    assert set(body["samples"][0]) == {"file", "meta"}
    uploaded = client.post("/datasets/ng/upload", data=FORM, files=files("images", rust[1:]))
    assert uploaded.json()["ng_added"] == 1

    predicted = client.post("/predict", data=FORM, files=image(rust[0]))
    assert predicted.status_code == 200, predicted.json()
    legacy = predicted.json()
    assert legacy["role_id"] == ROI["role_id"] and legacy["roi_id"] == ROI["roi_id"]
    (score,) = legacy["scores"]
    assert score["roi"] == ROI["roi_id"] and isinstance(score["score"], float)
    assert "is_anomaly" in score and legacy["inference_ms"] > 0
    assert legacy["image_resized"] == [224, 224]

    status = client.get("/train/status").json()
    assert set(status) >= {"status", "last_train_ts", "queue_size", "model", "device"}
    assert status["status"] in ("idle", "running") and status["coreset_size"] > 0


def test_infer_batch_multipart_keeps_order(fitted: Server, test_discs) -> None:
    crops = [encode_png(d.image) for d in test_discs[:3]]
    items = [{**ROI, "mm_per_px": MM_PER_PX, "heatmap": False} for _ in crops]
    items[1]["roi_id"] = "never_fitted"
    response = fitted.client.post(
        "/infer_batch", data={"items": json.dumps(items)}, files=files("images", crops)
    )
    assert response.status_code == 200, response.json()
    results = response.json()["results"]
    assert [r["ok"] for r in results] == [True, False, True]
    assert results[1]["error"]["kind"] == "not_fitted"
    single = infer(fitted, crops[2], heatmap="false")
    assert results[2]["score"] == pytest.approx(single["score"], rel=1e-5)
    mismatch = fitted.client.post(
        "/infer_batch", data={"items": json.dumps(items)}, files=files("images", crops[:2])
    )
    assert "3 items" in mismatch.json()["error"]["message"]


def test_dataset_list_delete_clear(server: Server, ok_pngs) -> None:
    client = server.client
    client.post("/datasets/ok/upload", data=FORM, files=files("images", ok_pngs[:3]))
    name = client.get("/datasets/list", params=ROI).json()["datasets"]["ok"]["files"][0]["file"]
    deleted = client.delete("/datasets/file", params={**ROI, "label": "ok", "file": name})
    assert deleted.json()["deleted"] == 1
    cleared = client.delete("/datasets/clear", params={**ROI, "label": "ok"})
    assert cleared.json()["deleted"] == 2
    assert client.get("/datasets/list", params=ROI).json()["datasets"]["ok"]["count"] == 0


def test_recipe_id_from_field_query_or_header(fitted: Server, ok_pngs) -> None:
    client = fitted.client
    by_header = client.post(
        "/datasets/ok/upload",
        data=FORM,
        files=files("images", ok_pngs[:1]),
        headers={"X-Recipe-Id": "Variant-B"},
    )
    assert by_header.json()["recipe_id"] == "variant-b"
    by_query = client.get("/manifest", params={**ROI, "recipe_id": "variant-b"}).json()
    assert by_query["recipe_id"] == "variant-b" and by_query["datasets"]["ok"] == 1
    by_field = client.post(
        "/infer",
        data={**FORM, "recipe_id": "default"},
        files=image(ok_pngs[9]),
        headers={"X-Recipe-Id": "variant-b"},  # the field wins
    )
    assert by_field.status_code == 200 and by_field.json()["recipe_id"] == "default"


# -- the contract's error codes over HTTP ----------------------------------------------------


def test_400_bad_request_not_fitted_token_mismatch(fitted: Server, ok_pngs) -> None:
    client = fitted.client
    missing = client.post("/infer", data={"role_id": "x"}, files=image(ok_pngs[0]))
    message = assert_error(missing, 400, "bad_request")["error"]["message"]
    assert "roi_id" in message and "mm_per_px" in message  # FastAPI's 422, as the contract's 400
    negative = client.post("/infer", data={**FORM, "mm_per_px": "-1"}, files=image(ok_pngs[0]))
    assert (
        "mm_per_px must be positive"
        in assert_error(negative, 400, "bad_request")["error"]["message"]
    )
    garbage = client.post("/infer", data=FORM, files=image(b"not an image"))
    assert_error(garbage, 400, "bad_request")
    shape = client.post(
        "/infer", data={**FORM, "shape": '{"kind":"circle"'}, files=image(ok_pngs[0])
    )
    assert "shape" in assert_error(shape, 400, "bad_request")["error"]["message"]
    reserved = client.get("/manifest", params=ROI, headers={"X-Recipe-Id": "last"})
    assert assert_error(reserved, 400, "bad_request")["recipe_id"] == "last"
    calibrate = client.post("/calibrate_ng", json={**ROI, "ok_scores": "high"})
    assert_error(calibrate, 400, "bad_request")
    unfitted = client.post("/infer", data={**FORM, "roi_id": "new"}, files=image(ok_pngs[0]))
    assert_error(unfitted, 400, "not_fitted")
    wide = encode_png(np.zeros((224, 112, 3), np.uint8))
    assert_error(client.post("/infer", data=FORM, files=image(wide)), 400, "token_mismatch")
    unknown = client.get("/no/such/route")
    assert_error(unknown, 404, "not_found")


@pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning")  # the engine's mean
def test_overflowing_scores_still_give_a_json_reply(fitted: Server) -> None:
    scores = {"ok_scores": [1e308, 1e308], "ng_scores": [1e308]}  # the mean overflows
    response = fitted.client.post("/calibrate_ng", json={**ROI, **scores})
    assert response.status_code in (200, 400) and "request_id" in response.json()
    assert fitted.client.get("/manifest", params=ROI).status_code == 200


@pytest.mark.reliability("security", "HTTP API key: 401 without it, /health stays public")
def test_401_without_the_api_key_except_health(serve, record_property) -> None:
    server = serve(api_key="secret")
    url = server.url
    with httpx.Client(base_url=url, timeout=30) as anonymous:
        assert anonymous.get("/health").status_code == 200
        assert anonymous.get("/docs").status_code == 200
        for response in (
            anonymous.get("/manifest", params=ROI),
            anonymous.get("/metrics"),
            anonymous.post("/fit_ok", data=FORM, headers={"X-API-Key": "wrong"}),
        ):
            assert_error(response, 401, "unauthorized")
        preflight = anonymous.options(
            "/infer",
            headers={"Origin": "http://gui.local", "Access-Control-Request-Method": "POST"},
        )
        assert preflight.status_code == 200  # browsers preflight without the key
    assert server.client.get("/manifest", params=ROI).status_code == 200
    record_property("tried", 6)
    record_property("detail", "401 contract body without or with a wrong key; /health, /docs open")


def test_409_scale_mismatch(fitted: Server, ok_pngs) -> None:
    response = fitted.client.post(
        "/infer", data={**FORM, "mm_per_px": "0.25"}, files=image(ok_pngs[0])
    )
    assert_error(response, 409, "scale_mismatch")
    refit = fitted.client.post(
        "/fit_ok", data={**FORM, "mm_per_px": "0.3"}, files=files("images", ok_pngs[:1])
    )
    assert_error(refit, 409, "scale_mismatch")


@pytest.mark.reliability("bad_input", "oversized bodies and images over HTTP")
def test_413_body_and_image_limits(serve, ok_pngs, record_property) -> None:
    server = serve(max_image_bytes=150_000, http={"max_body_bytes": 1_000_000})
    client = server.client
    declared = client.post("/fit_ok", data=FORM, files=files("images", ok_pngs[:11]))
    assert_error(declared, 413, "payload_too_large")

    def chunks():  # no Content-Length: the limit is counted while the body streams in
        for _ in range(40):
            yield b"[" * 65_536

    streamed = client.post(
        "/calibrate_ng", content=chunks(), headers={"Content-Type": "application/json"}
    )
    assert_error(streamed, 413, "payload_too_large")
    big_image = b"\x89PNG\r\n\x1a\n" + bytes(200_000)  # under the body limit, over the image's
    one = client.post("/fit_ok", data=FORM, files=files("images", [ok_pngs[0], big_image]))
    assert "images[1]" in assert_error(one, 413, "payload_too_large")["error"]["message"]
    assert client.get("/manifest", params=ROI).json()["datasets"]["ok"] == 0  # nothing stored
    assert client.get("/health").status_code == 200  # the server is still fine
    record_property("tried", 3)
    record_property("lost", 0)
    record_property("detail", "declared, streamed and per-image limits: 413, nothing stored")


def test_428_when_a_decision_is_required_uncalibrated(fitted: Server, ok_pngs) -> None:
    response = fitted.client.post(
        "/infer", data={**FORM, "require_calibration": "true"}, files=image(ok_pngs[0])
    )
    assert_error(response, 428, "not_calibrated")


def test_503_until_the_model_is_loaded_and_commands_wait_for_it(fitted: Server, ok_pngs) -> None:
    services = fitted.agent.services
    services.model_state = "loading"
    try:
        health = fitted.client.get("/health")
        body = assert_error(health, 503, "busy")
        assert body["status"] == "loading" and "loading" in body["reason"]
        assert body["device"] and body["version"]  # still the health body
        with ThreadPoolExecutor(1) as pool:
            waiting = pool.submit(fitted.client.post, "/infer", data=FORM, files=image(ok_pngs[0]))
            time.sleep(1.0)
            assert not waiting.done()  # queued, not refused
            services.model_state = "ready"
            fitted.agent.worker.model_changed()
            assert waiting.result(30).status_code == 200
    finally:
        services.model_state = "ready"
    assert fitted.client.get("/health").status_code == 200


def test_500_keeps_the_trace_in_the_log(server: Server, monkeypatch) -> None:
    from structlog.testing import capture_logs

    def explode(cmd):
        raise RuntimeError("secret internals")

    monkeypatch.setattr(server.agent.bus, "submit", explode)
    with capture_logs() as logs:
        response = server.client.get("/manifest", params=ROI, headers={"X-Request-Id": "r-500"})
    body = assert_error(response, 500, "internal")
    assert body["request_id"] == "r-500" and "secret" not in response.text
    crash = [e for e in logs if e["event"] == "unhandled error"]
    assert crash and crash[0]["exc_info"] and crash[0]["request_id"] == "r-500"


def test_request_and_correlation_ids_are_echoed(server: Server) -> None:
    client = server.client
    by_request = client.get("/health", headers={"X-Request-Id": "gui-42"})
    assert by_request.headers["x-request-id"] == "gui-42"
    assert by_request.json()["request_id"] == "gui-42"
    by_correlation = client.get("/manifest", params=ROI, headers={"X-Correlation-Id": "corr-7"})
    assert by_correlation.json()["request_id"] == "corr-7"
    assert by_correlation.headers["x-request-id"] == "corr-7"
    fresh = client.get("/stats")
    assert len(fresh.headers["x-request-id"]) == 36  # a new UUID


def test_small_replies_do_not_wait_for_delayed_acks(server: Server) -> None:
    """Nagle off on the accepted connection: small replies never wait for the client's
    delayed ACK (read from the socket itself, not timed)."""
    server.client.get("/stats").raise_for_status()  # a kept-alive connection exists
    port = int(str(server.client.base_url).rsplit(":", 1)[1].strip("/"))
    assert server_connections_nodelay(port) and all(server_connections_nodelay(port))


def test_stats_metrics_and_root(fitted: Server, ok_pngs) -> None:
    client = fitted.client
    infer(fitted, ok_pngs[9])
    stats = client.get("/stats").json()
    assert stats["infer_count"] == 1 and stats["by_source"]["http"] >= 2
    metrics = client.get("/metrics")
    assert metrics.headers["content-type"].startswith("text/plain")
    assert 'bdi_commands_total{command="infer",outcome="ok",source="http"} 1.0' in metrics.text
    root = client.get("/").json()
    assert root["name"] == "brakedisc-inspector-agent" and root["version"]
    assert client.get("/docs").status_code == 200
    spec = client.get("/openapi.json").json()
    assert "/infer_batch" in spec["paths"] and "ValidationError" not in json.dumps(spec)
    responses = [op["responses"] for path in spec["paths"].values() for op in path.values()]
    assert not any("422" in r for r in responses)  # FastAPI's 422 leaves as the 400 body


def test_train_status_reports_a_running_fit(server: Server, ok_pngs) -> None:
    seen: set[str] = set()
    fit = threading.Thread(
        target=server.client.post,
        args=("/fit_ok",),
        kwargs={"data": FORM, "files": files("images", ok_pngs[:12])},
    )
    fit.start()
    with httpx.Client(base_url=server.url, timeout=30) as poller:
        while fit.is_alive():
            seen.add(poller.get("/train/status").json()["status"])
            time.sleep(0.02)
    fit.join()
    assert "running" in seen
    assert server.client.get("/train/status").json()["status"] == "idle"
    # A folder's debounced refit is training too, running or queued.
    refit = Refit(request_id="refit", role_id=ROI["role_id"], roi_id=ROI["roi_id"])
    pending = server.agent.bus.submit(refit)
    seen_refit = set()
    while not pending.done():
        status = server.client.get("/train/status").json()
        seen_refit.add((status["status"], status["running"]))
        time.sleep(0.02)
    assert pending.result().ok and ("running", "refit") in seen_refit, seen_refit


def test_stop_frees_the_port(serve) -> None:
    server = serve()
    url = server.url
    assert server.adapter.port and httpx.get(f"{url}/health").status_code == 200
    server.client.close()
    server.adapter.stop()
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{url}/health", timeout=2)


def test_the_agent_wiring_builds_the_http_adapter(make_agent) -> None:
    from adapters.http.adapter import HttpAdapter
    from agent.adapters_wiring import build_adapters

    agent = make_agent(http={"enabled": True, "port": 0})
    (adapter,) = build_adapters(agent.settings, agent)  # MQTT and folders are off
    assert isinstance(adapter, HttpAdapter)
    adapter.start()
    try:
        assert httpx.get(f"{adapter.url}/health", timeout=30).json()["status"] == "ok"
    finally:
        adapter.stop()
