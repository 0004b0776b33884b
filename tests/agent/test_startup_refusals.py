"""``bdi-agent run`` refuses to start, in one line and before anything connects, when its
HTTP port is taken or a restore holds the data root."""

from __future__ import annotations

import socket
import subprocess
import sys
import uuid
from pathlib import Path

from agent.root_lock import lock_path, try_exclusive
from tests.adapters.mqtt_support import Broker, Client
from tests.support import cli_env


def run_agent(data_root: Path, cwd: Path, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "agent", "run"],
        env=cli_env(data_root, **env),
        capture_output=True,
        text=True,
        timeout=120,
        cwd=cwd,
    )


def retained_under(broker: Broker, prefix: str) -> list[tuple[str, object]]:
    """The retained messages under ``prefix``: a broker sends them on subscription, before
    a message published afterwards on the same connection, so once that marker is back
    every retained message has arrived."""
    client = Client(
        broker.port, client_id=f"probe-{uuid.uuid4().hex[:6]}", subscribe=(f"{prefix}/#",)
    )
    try:
        marker = f"{prefix}/probe-{uuid.uuid4().hex[:6]}"
        client.publish(marker, {"probe": True})
        client.wait_for(lambda topic, _body: topic == marker, timeout=10)
        return [(t, b) for t, b, _ in client.messages if t != marker]
    finally:
        client.close()


def test_a_taken_http_port_is_one_line_and_nothing_connects(
    tmp_path: Path, fresh_broker: Broker
) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        result = run_agent(
            tmp_path / "data",
            tmp_path,
            BDI_AGENT_ID="taken",
            BDI_HTTP__ENABLED="true",
            BDI_HTTP__PORT=str(port),
            BDI_MQTT__ENABLED="true",
            BDI_MQTT__PORT=str(fresh_broker.port),
        )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert f"HTTP port {port} on 127.0.0.1 is taken" in lines[0] and "BDI_HTTP__PORT" in lines[0]
    assert "mqtt connected" not in result.stdout
    # Nothing reached the broker: no retained status (online, offline, stopped) is left.
    assert retained_under(fresh_broker, "bdi/taken") == []


def test_an_agent_does_not_start_while_a_restore_holds_the_root(tmp_path: Path) -> None:
    data = tmp_path / "data"
    restore_lock = try_exclusive(data)
    assert restore_lock is not None and restore_lock.held
    with restore_lock:
        result = run_agent(data, tmp_path)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "a restore is running" in lines[0], result.stderr
    assert str(lock_path(data)) in lines[0]
    assert not (data / "journal").exists()  # refused before the agent was built
