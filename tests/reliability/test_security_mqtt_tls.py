"""Security promises of the contract, tried against the real parts: MQTT over TLS with a
password file.

MQTT (sections 5, 8): a mosquitto with only a TLS listener (a CA made in the test) and a
password file lets the agent in with the right CA and password and a full fit/infer round
trip works; anonymous, wrong-password and plain-TCP clients get nothing through; an agent
refused for its password, its CA or the broker's host name stays up, keeps retrying and
connects once the broker is fixed.
"""

# Fixtures are imported from the adapter tests' modules.
# ruff: noqa: F811

from __future__ import annotations

import base64
import json
import os
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from agent.demo.discs import encode_png
from agent.parsing import parse_command
from tests.adapters.conftest import mqtt_agent, wait_connected  # noqa: F401 (fixture)
from tests.adapters.mqtt_support import Broker
from tests.reliability.hostile import MM_PER_PX, SECURITY
from tests.reliability.tls_support import (
    KeyPair,
    TlsClient,
    connect_and_publish,
    make_ca,
    make_leaf,
    password_file,
    raw_attempt,
    tls_broker,
)


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


class Pki:
    """The test's certificates: a CA and another CA that signed nothing of the broker's."""

    def __init__(self, workdir: Path) -> None:
        self.ca = make_ca(workdir, "line-ca")
        self.other_ca = make_ca(workdir, "other-ca")
        self.broker = make_leaf(self.ca, workdir, "broker")
        self.elsewhere = make_leaf(self.ca, workdir, "elsewhere", names=("DNS:elsewhere.invalid",))
        self.broker_by_other = make_leaf(self.other_ca, workdir, "broker-other")


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return Pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture
def tls_brokers(tmp_path: Path, pki: Pki) -> Iterator[Callable[..., Broker]]:
    """``tls_brokers(server_cert, passwords, port=None)``: TLS-only mosquittos of this
    test, stopped at its end."""
    started: list[Broker] = []

    def start(server: KeyPair, passwords: Path, port: int | None = None) -> Broker:
        broker = tls_broker(tmp_path / f"broker{len(started)}", pki.ca, server, passwords)
        broker.port = port or broker.port
        broker.start()
        started.append(broker)
        return broker

    yield start
    for broker in started:
        broker.stop()


def _connections(broker: Broker) -> int:
    """Connection attempts the broker logged. mosquitto logs a TLS handshake that fails
    while it accepts as "Client connection from ... failed"; the readiness probe of
    ``Broker.start`` (a bare TCP connect) fails with "unexpected eof" and is no attempt."""
    log = broker.workdir / "mosquitto.log"
    lines = log.read_text(errors="replace").splitlines() if log.exists() else []
    return sum(
        "New connection from" in line
        or ("Client connection from" in line and "unexpected eof" not in line)
        for line in lines
    )


def _ask(client: TlsClient, prefix: str, command: str, **payload: Any) -> dict[str, Any]:
    request_id = f"{command}-{time.monotonic_ns()}"
    client.publish(f"{prefix}/cmd/{command}", {"request_id": request_id, **payload})
    return client.reply(request_id, timeout=120)


@pytest.mark.reliability(SECURITY, "MQTT over TLS + password: round trip; intruders get nothing")
def test_tls_with_login_round_trip_and_intruders(
    tmp_path: Path, pki: Pki, tls_brokers, mqtt_agent, ok_pngs, test_discs, record_property
) -> None:
    passwords = password_file(tmp_path / "passwd", {"line": "agent-pw", "plc": "plc-pw"})
    broker = tls_brokers(pki.broker, passwords)
    agent, _ = mqtt_agent(
        broker.port,
        agent_id="sec",
        tls={"ca_file": pki.ca.cert},
        username="line",
        password="agent-pw",
    )
    prefix = "bdi/sec"
    roi = {"role_id": "Inspection", "roi_id": "Inspection_1"}
    problems: list[str] = []

    # Intruders: each sends CONNECT and, without waiting for the answer, an add_ng.
    def intrusion(request_id: str) -> bytes:
        body = {
            "request_id": request_id,
            **roi,
            "mm_per_px": MM_PER_PX,
            "images": [b64(ok_pngs[0])],
        }
        return json.dumps(body).encode()

    intruders = {
        "anonymous over TLS": (None, None, pki.ca.cert),
        "wrong password over TLS": ("plc", "guess", pki.ca.cert),
        "right password over plain TCP": ("plc", "plc-pw", None),
    }
    outcomes = {}
    for name, (user, password, ca) in intruders.items():
        packets = connect_and_publish(
            user, password, f"{prefix}/cmd/add_ng", intrusion(f"intruder-{name}")
        )
        attempt = raw_attempt(broker.port, packets, ca)
        outcomes[name] = attempt.describe()
        if attempt.accepted:
            problems.append(f"{name} was let in: {attempt.describe()}")
    # The same raw client with the right login and CA is let in: the refusals above are
    # the broker's doing, not a broken probe. It publishes on a topic nobody serves.
    control = raw_attempt(
        broker.port, connect_and_publish("plc", "plc-pw", "probe/control", b"{}"), pki.ca.cert
    )
    if not control.accepted:
        problems.append(f"the right login over TLS was refused: {control.describe()}")

    plc = TlsClient(broker.port, pki.ca.cert, "plc", "plc-pw")
    try:
        health = _ask(plc, prefix, "health")
        if health.get("mqtt") != "connected":
            problems.append(f"health over TLS: {health}")
        images = [b64(p) for p in ok_pngs[:3]]
        fit = _ask(plc, prefix, "fit_ok", **roi, mm_per_px=MM_PER_PX, images=images)
        if not fit.get("ok") or fit.get("ok_added") != 3:
            problems.append(f"fit_ok over TLS: {str(fit)[:200]}")
        image = b64(encode_png(test_discs[0].image))
        infer = _ask(plc, prefix, "infer", **roi, mm_per_px=MM_PER_PX, image=image, heatmap=False)
        if not infer.get("ok") or not isinstance(infer.get("score"), float):
            problems.append(f"infer over TLS: {str(infer)[:200]}")
        manifest = _ask(plc, prefix, "manifest", **roi)
        # The intruders' add_ng, had any got through, was queued before these commands.
        if manifest.get("datasets") != {"ok": 3, "ng": 0}:
            problems.append(f"an intruder's add_ng landed: {manifest.get('datasets')}")
        leaked = [b for _, b, _ in plc.messages if isinstance(b, dict) and "intruder" in
                  str(b.get("request_id"))]  # fmt: skip
        if leaked:
            problems.append(f"replies to intruders: {leaked[:2]}")
    finally:
        plc.close()
    record_property("tried", len(intruders) + 1 + 4)
    record_property("failures", len(problems))
    record_property("lost", 0)
    record_property(
        "detail",
        "fit/infer over TLS ok; " + "; ".join(f"{k}: {v}" for k, v in outcomes.items()),
    )
    assert agent.bus.health()["mqtt"] == "connected"
    assert not problems, problems


# name: (agent's CA, broker's certificate at first, agent's password, the fix)
REFUSALS = {
    "wrong password": ("ca", "broker", "not-the-password", "password file"),
    "CA that did not sign the broker": ("other_ca", "broker", "agent-pw", "certificate"),
    "certificate for another host": ("ca", "elsewhere", "agent-pw", "certificate"),
}


@pytest.mark.parametrize("case", list(REFUSALS))
@pytest.mark.reliability(SECURITY, "MQTT agent refused (password, CA, host): retries, recovers")
def test_a_refused_agent_stays_up_and_keeps_retrying(
    tmp_path: Path, pki: Pki, tls_brokers, mqtt_agent, case: str, record_property
) -> None:
    agent_ca, broker_cert, agent_password, fix = REFUSALS[case]
    passwords = password_file(tmp_path / "passwd", {"line": "agent-pw"})
    broker = tls_brokers(getattr(pki, broker_cert), passwords)
    with capture_logs() as captured:  # what the operator reads about the refusal
        agent, _ = mqtt_agent(
            broker.port,
            agent_id="refused",
            wait=False,
            tls={"ca_file": getattr(pki, agent_ca).cert},
            username="line",
            password=agent_password,
        )
        problems: list[str] = []
        deadline = time.monotonic() + 30
        while _connections(broker) < 1 and time.monotonic() < deadline:
            if agent.bus.mqtt_state == "connected":
                problems.append("connected although the broker must refuse it")
                break
            time.sleep(0.05)
        time.sleep(0.3)  # the refusal has reached the agent's client by now
        refused = _connections(broker)
        health = agent.bus.health()
        if refused < 1 or health["mqtt"] != "disconnected" or health["status"] != "degraded":
            problems.append(f"{refused} refused attempts, health {health}")
    # The operator learns why from the log: the broker's refusal, or the TLS handshake's.
    said = [
        e for e in captured if e["event"] in ("mqtt connection refused", "mqtt connection failed")
    ]
    expected = "not authorized" if fix == "password file" else "certificate verify failed"
    if not any(expected in str(e.get("reason", "")).lower() for e in said):
        problems.append(f"the log does not say {expected!r}: {said[:2]}")
    manifest = agent.bus.execute(
        parse_command("manifest", {"role_id": "r", "roi_id": "i"}, "http"), timeout=60
    )
    if not manifest.ok:
        problems.append(f"the worker stopped answering: {manifest.error}")

    # The operator fixes the broker side; the agent, still retrying, gets in: the proof
    # that the refusal did not end its attempts.
    if fix == "password file":
        password_file(passwords, {"line": agent_password})
        assert broker.proc is not None
        os.kill(broker.proc.pid, signal.SIGHUP)  # mosquitto reloads its password file
    else:
        broker.stop()  # and started again on its port with a certificate the agent trusts
        right = pki.broker_by_other if agent_ca == "other_ca" else pki.broker
        tls_brokers(right, passwords, port=broker.port)
    try:
        wait_connected(agent, timeout=60)
    except TimeoutError as exc:
        problems.append(f"not connected after the fix: {exc}")
    attempts = refused + 1
    record_property("tried", attempts)
    record_property("failures", len(problems))
    record_property("lost", 0)
    record_property(
        "detail",
        f"{case}: {refused} refused attempt(s), health {health['mqtt']}, worker answering; "
        f"connected after fixing the {fix}",
    )
    assert not problems, problems
