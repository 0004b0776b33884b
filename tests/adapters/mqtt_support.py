"""A real mosquitto on a free port, and a small MQTT test client."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def mosquitto_binary() -> str:
    found = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    if not Path(found).exists():
        raise RuntimeError("mosquitto is not installed: run `make test` (it installs it)")
    return found


class Broker:
    """mosquitto with persistence, so queued QoS 1 messages survive a SIGKILL."""

    def __init__(self, workdir: Path, extra_conf: str = "") -> None:
        self.workdir = workdir
        self.port = free_port()
        self.extra_conf = extra_conf
        self.proc: subprocess.Popen[bytes] | None = None
        workdir.mkdir(parents=True, exist_ok=True)

    def start(self) -> None:
        conf = self.workdir / "mosquitto.conf"
        conf.write_text(
            f"listener {self.port} 127.0.0.1\n"
            "persistence true\n"
            f"persistence_location {self.workdir}/\n"
            "autosave_interval 1\n"
            "autosave_on_changes true\n"
            "max_queued_messages 100000\n"
            "max_inflight_messages 100\n"
            f"log_dest file {self.workdir}/mosquitto.log\n"
            # As root, mosquitto would drop to its own user and lose write access here.
            + ("user root\n" if os.geteuid() == 0 else "")
            + (self.extra_conf or "allow_anonymous true\n")
        )
        self.proc = subprocess.Popen([mosquitto_binary(), "-c", str(conf)])
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"mosquitto did not start on port {self.port}")

    def kill(self) -> None:
        self._signal(signal.SIGKILL)

    def stop(self) -> None:
        self._signal(signal.SIGTERM)

    def _signal(self, sig: int) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, sig)
            self.proc.wait(timeout=10)
        self.proc = None


class Client:
    """A PLC-like client: publishes commands, collects every message it receives."""

    def __init__(
        self,
        port: int,
        protocol: int = mqtt.MQTTv5,
        client_id: str = "plc",
        subscribe: tuple[str, ...] = ("bdi/#",),
        persistent: bool = False,
    ) -> None:
        self.messages: list[tuple[str, dict[str, Any] | str, Any]] = []
        self._cond = threading.Condition()
        if protocol == mqtt.MQTTv5:
            self.client = mqtt.Client(
                mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=protocol
            )
        else:
            self.client = mqtt.Client(
                mqtt.CallbackAPIVersion.VERSION2,
                client_id=client_id,
                protocol=protocol,
                clean_session=not persistent,
            )
        self.subscribe_to = subscribe
        self.client.on_connect = self._on_connect
        self.client.on_message = self._on_message
        self.protocol = protocol
        self.connected = threading.Event()
        kwargs: dict[str, Any] = {}
        if protocol == mqtt.MQTTv5:
            props = Properties(PacketTypes.CONNECT)
            props.SessionExpiryInterval = 600 if persistent else 0
            kwargs = {"clean_start": not persistent, "properties": props}
        self.client.connect_async("127.0.0.1", port, **kwargs)
        self.client.reconnect_delay_set(0.2, 2)
        self.client.loop_start()
        assert self.connected.wait(10), "test client could not connect"

    def _on_connect(self, client: Any, userdata: Any, flags: Any, reason: Any, props: Any):
        for topic in self.subscribe_to:
            client.subscribe(topic, qos=1)
        time.sleep(0.1)
        self.connected.set()

    def _on_message(self, client: Any, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        try:
            body: dict[str, Any] | str = json.loads(msg.payload)
        except ValueError:
            body = msg.payload.decode(errors="replace")
        with self._cond:
            self.messages.append((msg.topic, body, msg.properties))
            self._cond.notify_all()

    def publish(self, topic: str, payload: dict[str, Any] | bytes, **props: Any) -> None:
        data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        properties = None
        if props and self.protocol == mqtt.MQTTv5:
            properties = Properties(PacketTypes.PUBLISH)
            for name, value in props.items():
                setattr(properties, name, value)
        self.client.publish(topic, data, qos=1, properties=properties)

    def wait_for(
        self, predicate: Callable[[str, Any], bool], timeout: float = 60, count: int = 1
    ) -> list[tuple[str, Any, Any]]:
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                found = [m for m in self.messages if predicate(m[0], m[1])]
                if len(found) >= count:
                    return found
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError(f"{len(found)}/{count} matching messages in {timeout}s")
                self._cond.wait(remaining)

    def reply(self, request_id: str, timeout: float = 60) -> dict[str, Any]:
        _topic, body, _ = self.wait_for(
            lambda t, b: (
                "/result/" in t and isinstance(b, dict) and b.get("request_id") == request_id
            ),
            timeout,
        )[0]
        return body

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def wait_connected(agent: Any, timeout: float = 20, state: str = "connected") -> None:
    """Until the agent's MQTT state is ``state`` (an ``agent.bootstrap.Agent``)."""
    deadline = time.monotonic() + timeout
    while agent.bus.mqtt_state != state:
        if time.monotonic() > deadline:
            raise TimeoutError(f"MQTT state is {agent.bus.mqtt_state}, wanted {state}")
        time.sleep(0.05)
