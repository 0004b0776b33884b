"""``make run`` (``python -m agent.run_local``): says where weights would come from, starts
a broker when none answers, starts the agent, and on Ctrl-C stops both by pid."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from agent.config import Settings
from agent.demo.procs import answers
from agent.run_local import check_weights, plan_mqtt
from engine.backbone.weights import HUB_REPO
from tests.adapters.mqtt_support import free_port
from tests.e2e.support import FrontDoor, alive, clean_env, wait_json


def test_weights_are_looked_for_locally_only(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from huggingface_hub import constants

    monkeypatch.delenv("BDI_BACKBONE_WEIGHTS", raising=False)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    hub = Settings(data_root=tmp_path / "data", backbone_weights="hub")
    assert not check_weights(hub).found
    snapshot = tmp_path / "hub" / f"models--{HUB_REPO.replace('/', '--')}" / "snapshots" / "abc"
    snapshot.mkdir(parents=True)
    (snapshot / "model.safetensors").write_bytes(b"x")
    (snapshot.parents[1] / "refs").mkdir()
    (snapshot.parents[1] / "refs" / "main").write_text("abc")
    assert check_weights(hub).found
    absent = Settings(data_root=tmp_path, backbone_weights=str(tmp_path / "absent.pth"))
    assert not check_weights(absent).found
    named = Settings(data_root=tmp_path, backbone_weights=str(snapshot / "model.safetensors"))
    assert check_weights(named).found
    random = check_weights(Settings(data_root=tmp_path, backbone_weights="random"))
    assert random.found and "RANDOM" in random.label
    # `bdi-agent weights import` leaves a default in the data root: it beats the hub.
    imported = tmp_path / "data" / "weights"
    imported.mkdir(parents=True)
    (imported / "default.json").write_text('{"file": "dinov2.pth"}')
    assert not check_weights(hub).found  # the record names a file that is not there
    (imported / "dinov2.pth").write_bytes(b"x")
    assert check_weights(hub).found and "imported" in check_weights(hub).label


def test_mqtt_plan_says_why() -> None:
    port = free_port()
    off = Settings(mqtt={"enabled": False})
    assert not plan_mqtt(off, "/usr/sbin/mosquitto").enabled
    local = Settings(mqtt={"host": "127.0.0.1", "port": port})
    assert plan_mqtt(local, "/usr/sbin/mosquitto").start_port == port
    no_binary = plan_mqtt(local, None)
    assert not no_binary.enabled and "not installed" in no_binary.note
    remote = plan_mqtt(Settings(mqtt={"host": "broker.invalid", "port": port}), None)
    assert remote.enabled and remote.start_port is None and "retrying" in remote.note


@pytest.mark.skipif(
    shutil.which("mosquitto") is None and not Path("/usr/sbin/mosquitto").exists(),
    reason="mosquitto missing (make test installs it)",
)
def test_make_run_without_weights_starts_broker_and_agent_then_stops_both(
    tmp_path: Path,
) -> None:
    mqtt_port, http_port = free_port(), free_port()
    env = clean_env(
        HF_HOME=str(tmp_path / "hf"),  # an empty cache: no weights on this "machine"
        HF_HUB_OFFLINE="1",
        BDI_DATA_ROOT=str(tmp_path / "data"),
        BDI_AGENT_ID="t-run",
        BDI_MQTT__PORT=str(mqtt_port),
        BDI_HTTP__PORT=str(http_port),
    )
    run = FrontDoor("agent.run_local", [], env)
    try:
        run.wait_line(lambda line: "NO DINOv2 WEIGHTS" in line, 30)
        run.wait_line(lambda line: "make demo" in line, 5)
        run.wait_line(lambda line: "started agent" in line, 30)
        status, body = wait_json(
            f"http://127.0.0.1:{http_port}/health",
            lambda code, b: b.get("status") == "error" and b.get("mqtt") == "connected",
            120,
        )
        # Up, connected to the broker it started, and honest about the weights.
        assert status == 503 and "BDI_BACKBONE_WEIGHTS" in body["reason"]
        children = run.started()
        assert set(children) == {"mosquitto", "agent"}
        assert run.interrupt() == 0, run.output()
    finally:
        run.kill()
    assert not any(alive(pid) for pid in children.values()), children
    assert not answers("127.0.0.1", mqtt_port)
    assert "stopped mosquitto" in run.output()
