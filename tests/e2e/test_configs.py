"""configs/: agent.yaml lists every setting at its default; the rois.yaml example is valid;
mosquitto.conf with its ACL and example password file runs in a real mosquitto."""

from __future__ import annotations

import os
import re
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
import yaml
from pydantic import BaseModel

from agent.config import LEGACY_NAMES, Settings, load_roi_defaults, load_settings
from engine.roi_mask import parse_shape
from tests.adapters.mqtt_support import free_port, mosquitto_binary
from tests.e2e.agent_yaml import SKIPPED, render

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = ROOT / "configs"
REGENERATE = "python -m tests.e2e.agent_yaml > configs/agent.yaml"


@pytest.fixture
def no_settings_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in list(os.environ):
        if name.startswith(("BDI_", "BRAKEDISC_")) or name in LEGACY_NAMES:
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)  # no configs/agent.yaml unless BDI_CONFIG names one


def field_paths(model: type[BaseModel], prefix: tuple[str, ...] = ()) -> set[tuple[str, ...]]:
    paths: set[tuple[str, ...]] = set()
    for name, field in model.model_fields.items():
        if name in SKIPPED:
            continue
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            paths |= field_paths(annotation, (*prefix, name))
        else:
            paths.add((*prefix, name))
    return paths


def yaml_paths(data: dict[str, Any], prefix: tuple[str, ...] = ()) -> set[tuple[str, ...]]:
    paths: set[tuple[str, ...]] = set()
    for key, value in data.items():
        if isinstance(value, dict):
            paths |= yaml_paths(value, (*prefix, key))
        else:
            paths.add((*prefix, key))
    return paths


def test_agent_yaml_lists_every_setting_at_its_default(
    no_settings_env: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    text = (CONFIGS / "agent.yaml").read_text(encoding="utf-8")
    listed = yaml_paths(yaml.safe_load(text))
    # agent_id's default is the host name: documented as a comment, never pinned.
    assert re.search(r"^# agent_id: ", text, re.MULTILINE)
    missing = field_paths(Settings) - listed - {("agent_id",)}
    assert not missing, f"configs/agent.yaml lacks {sorted(missing)}; run {REGENERATE}"
    unknown = listed - field_paths(Settings)
    assert not unknown, f"configs/agent.yaml has unknown settings {sorted(unknown)}"
    defaults = load_settings().model_dump()
    monkeypatch.setenv("BDI_CONFIG", str(CONFIGS / "agent.yaml"))
    from_file = load_settings().model_dump()
    assert from_file == defaults, f"configs/agent.yaml drifted from the defaults; {REGENERATE}"
    assert yaml.safe_load(render()) == yaml.safe_load(text), REGENERATE


def test_every_setting_has_a_description() -> None:
    def undescribed(model: type[BaseModel]) -> list[str]:
        out = []
        for name, field in model.model_fields.items():
            annotation = field.annotation
            if isinstance(annotation, type) and issubclass(annotation, BaseModel):
                out += undescribed(annotation)
            elif name not in SKIPPED and not field.description:
                out.append(name)
        return out

    assert undescribed(Settings) == []


def test_rois_yaml_is_empty_and_its_example_is_valid(tmp_path: Path) -> None:
    text = (CONFIGS / "rois.yaml").read_text(encoding="utf-8")
    assert load_roi_defaults(CONFIGS / "rois.yaml") == {}  # nothing applies by accident
    example = text.split("# --- example ---\n", 1)[1]
    uncommented = "\n".join(line.removeprefix("# ") for line in example.splitlines())
    (tmp_path / "rois.yaml").write_text(uncommented)
    rois = load_roi_defaults(tmp_path / "rois.yaml")
    assert len(rois) == 3 and ("d280-vented", "Master1", "Hub") in rois
    for entry in rois.values():
        assert entry.shape is not None and parse_shape(entry.shape) is not None


# -- the broker's configuration, run for real ---------------------------------------------


@pytest.fixture
def plant_broker(tmp_path: Path) -> Iterator[int]:
    """configs/mosquitto.conf with the container's paths moved into tmp_path."""
    port = free_port()
    for name, target in (("mosquitto.acl", "acl"), ("mosquitto.passwd.example", "passwd")):
        (tmp_path / target).write_bytes((CONFIGS / name).read_bytes())
    conf = (CONFIGS / "mosquitto.conf").read_text(encoding="utf-8")
    conf = conf.replace("/mosquitto/config/", f"{tmp_path}/").replace(
        "/mosquitto/data/", f"{tmp_path}/"
    )
    conf = conf.replace("listener 1883\n", f"listener {port} 127.0.0.1\n")
    conf = conf.replace("log_dest stdout", f"log_dest file {tmp_path}/mosquitto.log")
    if os.geteuid() == 0:  # as root mosquitto would switch to its own user
        conf += "user root\n"
    (tmp_path / "mosquitto.conf").write_text(conf)
    proc = subprocess.Popen([mosquitto_binary(), "-c", str(tmp_path / "mosquitto.conf")])
    try:
        deadline = time.monotonic() + 10
        while (
            not (tmp_path / "mosquitto.log").exists()
            or "running" not in (tmp_path / "mosquitto.log").read_text()
        ):
            assert proc.poll() is None, "mosquitto refused configs/mosquitto.conf"
            assert time.monotonic() < deadline, "mosquitto did not start"
            time.sleep(0.05)
        yield port
    finally:
        proc.terminate()
        proc.wait(10)


class Peer:
    """A logged-in MQTT 5 client that records what it receives."""

    def __init__(self, port: int, user: str | None, password: str = "change-me") -> None:
        self.received: list[tuple[str, bytes]] = []
        self.reason: Any = None
        self.connected = threading.Event()
        self.client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2, client_id=f"t-{user}", protocol=mqtt.MQTTv5
        )
        if user:
            self.client.username_pw_set(user, password)
        self.client.on_connect = self._on_connect
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        self.connected.wait(5)

    def _on_connect(self, client: Any, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        self.reason = reason
        self.connected.set()

    def _on_message(self, client: Any, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        self.received.append((msg.topic, bytes(msg.payload)))

    def subscribe(self, topic: str) -> None:
        self.client.subscribe(topic, qos=1)

    def publish(self, topic: str, payload: bytes) -> None:
        self.client.publish(topic, payload, qos=1).wait_for_publish(5)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def test_mosquitto_conf_logins_and_acl(plant_broker: int) -> None:
    anonymous = Peer(plant_broker, None)
    assert anonymous.reason is not None and anonymous.reason.is_failure
    anonymous.close()
    agent, plc, gui = (Peer(plant_broker, user) for user in ("bdi-agent", "plc", "gui"))
    try:
        assert not any(p.reason.is_failure for p in (agent, plc, gui))
        agent.subscribe("bdi/cell1/cmd/+")
        agent.subscribe("$share/pool/bdi/pool/cmd/infer")
        plc.subscribe("bdi/cell1/result/#")
        gui.subscribe("bdi/#")
        time.sleep(0.3)
        plc.publish("bdi/cell1/cmd/infer", b"from-plc")
        plc.publish("bdi/pool/cmd/infer", b"pooled")
        plc.publish("bdi/cell1/result/infer", b"forged")  # not the PLC's to write
        agent.publish("bdi/cell1/result/infer", b"verdict")
        gui.publish("bdi/cell1/status", b"forged")  # read-only there
        time.sleep(0.5)
        assert sorted(p for _, p in agent.received) == [b"from-plc", b"pooled"]
        assert [p for _, p in plc.received] == [b"verdict"]
        assert sorted(p for _, p in gui.received) == [b"from-plc", b"pooled", b"verdict"]
    finally:
        for peer in (agent, plc, gui):
            peer.close()
