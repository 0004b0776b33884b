"""Doctor's broker check: a real MQTT CONNECT with the agent's host, credentials and TLS.

A TCP connect alone says nothing about the password or the CA file; a CONNACK does.
The probe uses its own client id: the agent's would make the broker drop the running
agent's session. It tries MQTT 5 first, then 3.1.1 as the agent does, and says which one
the broker accepted: that is the one the agent will use.
"""

from __future__ import annotations

import os
import socket
import ssl
import time
from typing import Any, Literal

from agent.config import MqttSettings
from agent.ops.doctor.check import FAIL, OK, WARN, Check, Context

HOST_FIX = (
    "start the broker (systemctl status mosquitto) or correct BDI_MQTT__HOST / BDI_MQTT__PORT"
)
AUTH_FIX = "check BDI_MQTT__USERNAME / BDI_MQTT__PASSWORD and the broker's ACL"
TLS_FIX = (
    "BDI_MQTT__TLS__CA_FILE must be the CA that signed the broker's certificate, and the "
    "port its TLS listener (usually 8883)"
)
# paho's name for the CONNACK of a broker that does not speak the CONNECT's version (a
# 3.1.1 broker's return code 1).
V5_REFUSED = "Unsupported protocol version"
V5_FIX = "a broker that speaks MQTT 5 (mosquitto 1.6 or newer) gives ResponseTopic and expiry"

# How one CONNECT ended: accepted; refused for its protocol version; refused otherwise
# (the broker read it, so it speaks that version); unanswered (closed, or silent until
# the timeout: some 3.1.1 brokers treat a v5 CONNECT so); or never sent (socket, TLS).
Outcome = Literal["accepted", "unsupported", "refused", "unanswered", "unreachable"]


def check_broker(context: Context) -> list[Check]:
    cfg = context.settings.mqtt
    if not cfg.enabled:
        return [Check("broker", OK, "MQTT adapter disabled (BDI_MQTT__ENABLED=false)")]
    client_id = f"bdi-doctor-{context.settings.agent_id}-{os.getpid()}"
    return [probe_broker(cfg, client_id, context.timeout_s)]


def probe_broker(cfg: MqttSettings, client_id: str, timeout_s: float) -> Check:
    import paho.mqtt.client as mqtt

    where = f"{cfg.host}:{cfg.port}"
    tls = "TLS" if cfg.tls.ca_file else "plain"
    user = f" as {cfg.username}" if cfg.username else " anonymously"
    v5, v5_outcome = _connect_once(cfg, client_id, timeout_s, mqtt.MQTTv5)
    if v5_outcome == "accepted":
        return Check(
            "broker",
            OK,
            f"connected to {where}{user} ({tls}); the broker accepts MQTT 5: the agent uses MQTT 5",
        )
    if v5_outcome not in ("unsupported", "unanswered"):
        return v5
    # The agent falls back to 3.1.1 in both cases: try it before calling the broker bad.
    v311, v311_outcome = _connect_once(cfg, client_id, timeout_s, mqtt.MQTTv311)
    if v311_outcome == "accepted":
        if v5_outcome == "unsupported":
            why = "the broker refused MQTT 5: the agent uses MQTT 3.1.1"
        else:  # the agent waits for proof: two unanswered CONNECTs, a keepalive each
            why = (
                "the broker did not answer MQTT 5: the agent uses MQTT 3.1.1 after two "
                f"unanswered MQTT 5 CONNECTs (within about {2 * cfg.keepalive_s} s)"
            )
        return Check(
            "broker",
            WARN,
            f"connected to {where}{user} ({tls}) with MQTT 3.1.1; {why} (replies by "
            "request_id on the result topics; no ResponseTopic, no message expiry)",
            V5_FIX,
        )
    if v311_outcome == "refused":  # it speaks 3.1.1 but refuses us (credentials, ACL)
        return v311
    if v5_outcome == "unsupported":
        return Check("broker", FAIL, f"{where} speaks neither MQTT 5 nor 3.1.1", HOST_FIX)
    return v5


def _connect_once(
    cfg: MqttSettings, client_id: str, timeout_s: float, protocol: Any
) -> tuple[Check, Outcome]:
    """How the broker took one CONNECT, and the check that says it."""
    import paho.mqtt.client as mqtt

    where = f"{cfg.host}:{cfg.port}"
    answer: dict[str, Any] = {}

    def on_connect(client: Any, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        answer["reason"] = reason

    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=protocol)
    client.on_connect = on_connect
    client.connect_timeout = timeout_s
    if cfg.username:
        client.username_pw_set(cfg.username, cfg.password)
    try:
        if cfg.tls.ca_file:
            client.tls_set(
                ca_certs=str(cfg.tls.ca_file),
                certfile=str(cfg.tls.cert_file) if cfg.tls.cert_file else None,
                keyfile=str(cfg.tls.key_file) if cfg.tls.key_file else None,
                cert_reqs=ssl.CERT_REQUIRED,
            )
            client.tls_insecure_set(cfg.tls.insecure)
    except (OSError, ValueError, ssl.SSLError) as exc:
        return Check("broker", FAIL, f"TLS files unusable: {exc}", TLS_FIX), "unreachable"
    try:
        client.connect(cfg.host, cfg.port, keepalive=max(10, int(timeout_s) * 2))
        deadline = time.monotonic() + timeout_s
        while "reason" not in answer and time.monotonic() < deadline:
            if client.loop(timeout=0.1) != mqtt.MQTT_ERR_SUCCESS and "reason" not in answer:
                closed = Check(
                    "broker",
                    FAIL,
                    f"{where} closed the connection before answering the CONNECT",
                    f"{TLS_FIX} (or unset it for a plain listener); {HOST_FIX}",
                )
                return closed, "unanswered"
    except Exception as exc:  # socket, DNS and TLS errors all come out of connect()
        return _connect_error(where, exc, timeout_s), "unreachable"
    finally:
        try:
            client.disconnect()
            client.loop(timeout=0.1)  # writes the DISCONNECT and closes the socket
        except Exception:
            pass
    reason = answer.get("reason")
    if reason is None:
        silent = Check(
            "broker",
            FAIL,
            f"no CONNACK from {where} within {timeout_s:g} s",
            f"check the network and firewall; if the broker needs TLS set BDI_MQTT__TLS__CA_FILE; "
            f"{HOST_FIX}",
        )
        return silent, "unanswered"
    if reason.is_failure:
        text = str(reason)
        fix = AUTH_FIX if "auth" in text.lower() or "password" in text.lower() else HOST_FIX
        refused = Check("broker", FAIL, f"{where} refused the CONNECT: {text}", fix)
        return refused, "unsupported" if reason == V5_REFUSED else "refused"
    return Check("broker", OK, f"{where} accepted the CONNECT"), "accepted"


def _connect_error(where: str, exc: Exception, timeout_s: float) -> Check:
    if isinstance(exc, ssl.SSLCertVerificationError):
        return Check(
            "broker",
            FAIL,
            f"TLS: the broker's certificate is not trusted ({exc.verify_message})",
            TLS_FIX,
        )
    if isinstance(exc, ssl.SSLError):
        return Check("broker", FAIL, f"TLS handshake with {where} failed ({exc.reason})", TLS_FIX)
    if isinstance(exc, ConnectionRefusedError):
        return Check("broker", FAIL, f"nothing listens on {where} (connection refused)", HOST_FIX)
    if isinstance(exc, socket.gaierror):
        return Check(
            "broker",
            FAIL,
            f"host of {where} does not resolve ({exc.strerror})",
            "correct BDI_MQTT__HOST (or /etc/hosts)",
        )
    if isinstance(exc, TimeoutError | socket.timeout):
        return Check(
            "broker",
            FAIL,
            f"no answer from {where} within {timeout_s:g} s",
            f"check the network and firewall; {HOST_FIX}",
        )
    return Check("broker", FAIL, f"cannot reach {where} ({type(exc).__name__}: {exc})", HOST_FIX)
