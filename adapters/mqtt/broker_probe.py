"""What the adapter's clients share: credentials and TLS; and a probe of the broker's
MQTT 5, for when unanswered v5 CONNECTs made the adapter try 3.1.1.

A broker that was only frozen, or down behind a proxy that accepts and closes (docker's
port forwarding does), leaves v5 CONNECTs unanswered just like a 3.1.1 broker that cannot
read them. Once 3.1.1 is accepted the broker is up: a bare v5 CONNECT (no will, no
properties: the form a 3.1.1 broker can read and refuse) tells the two apart.
"""

from __future__ import annotations

import ssl
import threading
from typing import Any

import paho.mqtt.client as mqtt

from agent.config import MqttSettings


def secure(client: mqtt.Client, cfg: MqttSettings) -> None:
    """The broker's credentials and TLS settings on ``client``."""
    if cfg.username:
        client.username_pw_set(cfg.username, cfg.password)
    tls = cfg.tls
    if tls.ca_file:
        client.tls_set(
            ca_certs=str(tls.ca_file),
            certfile=str(tls.cert_file) if tls.cert_file else None,
            keyfile=str(tls.key_file) if tls.key_file else None,
            cert_reqs=ssl.CERT_REQUIRED,
        )
        client.tls_insecure_set(tls.insecure)


def accepts_v5(cfg: MqttSettings, client_id: str, timeout_s: float) -> bool:
    """True when the broker accepts a bare MQTT 5 CONNECT within ``timeout_s``."""
    answered = threading.Event()
    accepted: list[bool] = []

    def on_connect(client: Any, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        accepted.append(not reason.is_failure)
        answered.set()

    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id, protocol=mqtt.MQTTv5)
    client.on_connect = on_connect
    try:
        secure(client, cfg)
        client.connect(cfg.host, cfg.port, keepalive=cfg.keepalive_s)
    except (OSError, ValueError):  # unreachable again, or unusable TLS files
        return False
    client.loop_start()
    try:
        answered.wait(timeout_s)
    finally:
        client.disconnect()
        client.loop_stop()
    return accepted == [True]
