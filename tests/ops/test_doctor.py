"""`bdi-agent doctor`: each troubleshooting row as a check with its fix."""

from __future__ import annotations

import json
import socket
from collections.abc import Callable
from pathlib import Path

import pytest
from pydantic import ValidationError

from agent.bootstrap import Agent
from agent.config import Settings
from agent.ops.doctor.check import FAIL, OK, WARN, Check, Context, failed, render_text
from agent.ops.doctor.checks import check_device, check_http_port, check_legacy_names
from agent.ops.doctor.rois import check_roi
from agent.ops.doctor.run import run_doctor
from engine.features import FeatureExtractor
from engine.keys import RoiKey
from engine.store import ModelStore
from tests.adapters.mqtt_support import Broker, free_port
from tests.ops.conftest import bdi, fit_roi, ops_settings
from tests.support import cli_env


def by_name(checks: list[Check]) -> dict[str, Check]:
    return {c.name: c for c in checks}


def unwritable_root(tmp_path: Path) -> Path:
    # Tests run as root, and chmod does not stop root. A path *under a regular file*
    # cannot be created or written by anyone (ENOTDIR), which is what a data root on a
    # missing or read-only mount looks like to the agent.
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    return blocker / "data"


def test_unreachable_broker_and_unwritable_root_fail_then_pass_once_fixed(
    tmp_path: Path, extractor: FeatureExtractor
) -> None:
    mqtt = {"enabled": True, "host": "127.0.0.1", "port": free_port()}  # nothing listens
    http = {"enabled": True, "host": "127.0.0.1", "port": free_port()}
    broken = ops_settings(unwritable_root(tmp_path), mqtt=mqtt, http=http)
    checks = by_name(run_doctor(broken, timeout_s=2, extractor=extractor))
    assert checks["data_root"].status == FAIL and "Not a directory" in checks["data_root"].message
    assert checks["broker"].status == FAIL and "connection refused" in checks["broker"].message
    assert "BDI_MQTT__HOST" in checks["broker"].fix and "BDI_DATA_ROOT" in checks["data_root"].fix
    assert failed(list(checks.values()))

    broker = Broker(tmp_path / "broker")
    broker.start()
    try:
        fixed = ops_settings(tmp_path / "data", mqtt={**mqtt, "port": broker.port}, http=http)
        checks = by_name(run_doctor(fixed, timeout_s=5, extractor=extractor))
    finally:
        broker.stop()
    assert checks["data_root"].status == OK and "writable" in checks["data_root"].message
    assert checks["broker"].status == OK and "connected to" in checks["broker"].message
    assert "the agent uses MQTT 5" in checks["broker"].message
    assert checks["http_port"].status == OK and checks["device"].status == OK
    assert checks["weights"].status == WARN and "random" in checks["weights"].message
    assert not failed(list(checks.values()))
    assert "fix:" in render_text(list(checks.values()))  # warnings carry their fix


def test_a_broker_that_refuses_the_credentials_fails_with_the_auth_fix(tmp_path: Path) -> None:
    from agent.config import MqttSettings
    from agent.ops.doctor.broker import probe_broker

    broker = Broker(tmp_path / "broker", extra_conf="allow_anonymous false\n")
    broker.start()
    try:
        check = probe_broker(MqttSettings(port=broker.port, username="u", password="p"), "t", 5)
    finally:
        broker.stop()
    assert check.status == FAIL and "refused the CONNECT" in check.message
    assert "BDI_MQTT__PASSWORD" in check.fix


def test_a_busy_http_port_fails_and_legacy_names_warn(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with socket.socket() as other:
        other.bind(("127.0.0.1", 0))  # bound, not listening: refuses at once, no agent
        port = other.getsockname()[1]
        settings = ops_settings(tmp_path, http={"enabled": True, "port": port})
        [check] = check_http_port(Context(settings))
    assert check.status == FAIL and "in use by another program" in check.message
    assert "BDI_HTTP__PORT" in check.fix
    monkeypatch.setenv("PATCHCORE_CORES", "2")
    monkeypatch.setenv("BRAKEDISC_LOG_LEVEL", "DEBUG")
    [legacy] = check_legacy_names(Context(Settings(data_root=tmp_path)))
    assert legacy.status == WARN and "PATCHCORE_CORES" in legacy.message
    assert "PATCHCORE_CORES -> BDI_THREADS" in legacy.fix
    assert "BRAKEDISC_LOG_LEVEL -> BDI_LOG_LEVEL" in legacy.fix


def test_roi_checks_catch_what_would_break_an_infer(
    make_agent: Callable[..., Agent], ok_pngs: list[bytes], extractor: FeatureExtractor
) -> None:
    agent = make_agent()
    fit_roi(agent, ok_pngs[:6])
    models: ModelStore = agent.services.models
    datasets = agent.services.datasets
    key = RoiKey.of("Insp", "R1")
    fid = extractor.feature_id

    good = check_roi(models, datasets, key, fid, 224)
    assert good.status == OK and "threshold" in good.message, good
    # The agent now configured for 448 px: every infer would be a token_mismatch.
    resized = check_roi(models, datasets, key, fid.replace("-s224", "-s448"), 448)
    assert resized.status == FAIL and "input size 224 (agent: 448)" in resized.message

    memory = models.load_memory(key)
    assert memory is not None
    models.save_memory(key, memory.with_info(feature_id="0123456789abcdef-s224-l-1"))
    other = check_roi(models, datasets, key, fid, 224)
    assert other.status == FAIL and "other backbone weights 0123456789abcdef" in other.message
    assert "weights import" in other.fix
    models.save_memory(key, memory.with_info(model_version="refit-since"))
    stale = check_roi(models, datasets, key, fid, 224)
    assert stale.status == WARN and "calibration was chosen for memory" in stale.message
    calibration = models.load_calibration(key)
    assert calibration is not None
    models.save_calibration(key, {**calibration, "model_version": "refit-since", "mm_per_px": 0.5})
    scaled = check_roi(models, datasets, key, fid, 224)
    assert scaled.status == FAIL and "mm_per_px 0.5 differs" in scaled.message
    models.calibration_path(key).unlink()
    assert "not calibrated" in check_roi(models, datasets, key, fid, 224).message
    models.memory_path(key).write_bytes(b"PK\x03\x04 half a zip")
    broken = check_roi(models, datasets, key, fid, 224)
    assert broken.status == FAIL and "unreadable" in broken.message


def test_cli_exit_code_and_json(tmp_path: Path) -> None:
    port = free_port()
    env = cli_env(
        unwritable_root(tmp_path),
        BDI_MQTT__ENABLED="true",
        BDI_MQTT__PORT=str(port),
        BDI_DEVICE="cpu",
    )
    result = bdi(["doctor", "--json", "--timeout", "2"], env, tmp_path)
    assert result.returncode == 1, result.stderr
    body = json.loads(result.stdout)
    statuses = {c["name"]: c["status"] for c in body["checks"]}
    assert body["ok"] is False and statuses["data_root"] == "fail" and statuses["broker"] == "fail"
    assert statuses["weights"] == "warn" and statuses["device"] == "ok"
    assert all(c["fix"] for c in body["checks"] if c["status"] != "ok")


def test_the_device_check_says_why_there_is_no_gpu(tmp_path: Path) -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")

    def device(spec: str) -> Check:
        return check_device(Context(ops_settings(tmp_path, device=spec)))[0]

    auto = device("auto")
    assert auto.status == WARN and "running on the CPU" in auto.message
    assert "CPU-only build" in auto.message or "driver" in auto.message or "CUDA" in auto.message
    assert device("cuda").status == FAIL and "BDI_DEVICE=cpu" in device("cuda").fix
    assert device("cpu").status == OK
    # Not a device at all: the settings refuse it before any check runs (bdi-agent exits 2).
    with pytest.raises(ValidationError, match="auto, cpu, cuda or cuda:N"):
        device("gpu")
