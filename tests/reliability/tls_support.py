"""A throwaway PKI made with the openssl CLI, a mosquitto that speaks only TLS with a
password file, and MQTT test clients that speak TLS (or try to).

Nothing here is mocked: the certificates are real X.509 made for this test run, the broker
is the real mosquitto of ``tests/adapters/mqtt_support.Broker`` with a TLS listener, and
the clients are paho's.
"""

from __future__ import annotations

import os
import socket
import ssl
import subprocess
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from tests.adapters.mqtt_support import Broker, Client

OPENSSL = "/usr/bin/openssl"
# The server names the agent and the clients dial: the certificate must carry both.
LOCAL_NAMES = ("IP:127.0.0.1", "DNS:localhost")

# Our own openssl config, so the system's openssl.cnf cannot add or change extensions.
# The CA and leaf extensions are what a strict verifier (Python's VERIFY_X509_STRICT, the
# default from Python 3.13) wants to see.
OPENSSL_CNF = """\
[req]
distinguished_name = dn
prompt = no
[dn]
CN = {cn}
[ca]
basicConstraints = critical, CA:TRUE
keyUsage = critical, keyCertSign, cRLSign
subjectKeyIdentifier = hash
[leaf]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature
extendedKeyUsage = {usage}
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
subjectAltName = {names}
"""


@dataclass(frozen=True)
class KeyPair:
    cert: Path
    key: Path


def _openssl(*args: str | Path) -> None:
    subprocess.run([OPENSSL, *map(str, args)], check=True, capture_output=True)


def _config(workdir: Path, name: str, cn: str, usage: str = "serverAuth", names: str = "") -> Path:
    path = workdir / f"{name}.cnf"
    path.write_text(OPENSSL_CNF.format(cn=cn, usage=usage, names=names or "DNS:unused"))
    return path


def make_ca(workdir: Path, name: str) -> KeyPair:
    """A self-signed CA (P-256 key, valid two days)."""
    workdir.mkdir(parents=True, exist_ok=True)
    pair = KeyPair(workdir / f"{name}.crt", workdir / f"{name}.key")
    cnf = _config(workdir, name, cn=f"{name} test CA")
    _openssl("ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", pair.key)
    _openssl(
        "req", "-new", "-x509", "-config", cnf, "-extensions", "ca", "-key", pair.key,
        "-out", pair.cert, "-days", "2", "-sha256",
    )  # fmt: skip
    return pair


def make_leaf(
    ca: KeyPair,
    workdir: Path,
    name: str,
    names: tuple[str, ...] = LOCAL_NAMES,
    usage: str = "serverAuth",
) -> KeyPair:
    """A certificate signed by ``ca`` for ``names`` (subjectAltName entries)."""
    pair = KeyPair(workdir / f"{name}.crt", workdir / f"{name}.key")
    cnf = _config(workdir, name, cn=name, usage=usage, names=", ".join(names))
    csr = workdir / f"{name}.csr"
    _openssl("ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", pair.key)
    _openssl("req", "-new", "-config", cnf, "-key", pair.key, "-out", csr)
    _openssl(
        "x509", "-req", "-in", csr, "-CA", ca.cert, "-CAkey", ca.key, "-CAcreateserial",
        "-out", pair.cert, "-days", "2", "-sha256", "-extfile", cnf, "-extensions", "leaf",
    )  # fmt: skip
    # mosquitto may read its key as another user when it is not running as root.
    os.chmod(pair.key, 0o644)
    return pair


def password_file(path: Path, users: dict[str, str]) -> Path:
    """A mosquitto password file (hashed with ``mosquitto_passwd -b``)."""
    for i, (user, password) in enumerate(users.items()):
        create = ["-c"] if i == 0 else []
        subprocess.run(
            ["mosquitto_passwd", *create, "-b", str(path), user, password],
            check=True,
            capture_output=True,
        )
    os.chmod(path, 0o644)
    return path


def tls_broker(workdir: Path, ca: KeyPair, server: KeyPair, passwords: Path) -> Broker:
    """mosquitto whose only listener is TLS, with no anonymous access.

    ``Broker`` writes ``listener <port> 127.0.0.1`` first; the TLS options that follow
    belong to that listener, so it speaks nothing but TLS.
    """
    return Broker(
        workdir,
        extra_conf=(
            f"cafile {ca.cert}\n"
            f"certfile {server.cert}\n"
            f"keyfile {server.key}\n"
            "tls_version tlsv1.2\n"
            "allow_anonymous false\n"
            f"password_file {passwords}\n"
        ),
    )


def client_context(ca: Path) -> ssl.SSLContext:
    """What a careful client does: verify the chain and the host name."""
    context = ssl.create_default_context(cafile=str(ca))
    context.check_hostname = True
    return context


class TlsClient(Client):
    """``mqtt_support.Client`` (publish, wait_for, reply, close) over TLS with a login."""

    def __init__(
        self,
        port: int,
        ca: Path,
        username: str,
        password: str,
        client_id: str = "plc-tls",
        subscribe: tuple[str, ...] = ("bdi/#",),
    ) -> None:
        self.messages: list[tuple[str, dict[str, Any] | str, Any]] = []
        self._cond = threading.Condition()
        self.client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5
        )
        self.client.tls_set_context(client_context(ca))
        self.client.username_pw_set(username, password)
        self.subscribe_to = subscribe
        self.client.on_connect = self._on_connect
        self.client.on_message = self._on_message
        self.protocol = mqtt.MQTTv5
        self.connected = threading.Event()
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = 0
        self.client.connect_async("127.0.0.1", port, clean_start=True, properties=props)
        self.client.loop_start()
        assert self.connected.wait(10), "TLS test client could not connect"


def _utf8(text: str) -> bytes:
    data = text.encode()
    return len(data).to_bytes(2, "big") + data


def _packet(first_byte: int, body: bytes) -> bytes:
    """An MQTT control packet: fixed header with the variable-length remaining length."""
    length, encoded = len(body), b""
    while True:
        digit, length = length % 128, length // 128
        encoded += bytes([digit | (0x80 if length else 0)])
        if not length:
            return bytes([first_byte]) + encoded + body


def connect_and_publish(
    username: str | None, password: str | None, topic: str, payload: bytes
) -> bytes:
    """MQTT 3.1.1 CONNECT immediately followed by a QoS 1 PUBLISH, without waiting for the
    CONNACK: what a client trying to slip a command past a refused login would send."""
    flags = 0x02 | (0x80 if username is not None else 0) | (0x40 if password is not None else 0)
    body = _utf8("MQTT") + bytes([4, flags]) + (60).to_bytes(2, "big") + _utf8("intruder")
    if username is not None:
        body += _utf8(username)
    if password is not None:
        body += _utf8(password)
    publish = _utf8(topic) + (1).to_bytes(2, "big") + payload  # packet id 1
    return _packet(0x10, body) + _packet(0x32, publish)


@dataclass(frozen=True)
class Attempt:
    """What the broker sent back to one raw attempt."""

    received: bytes
    error: str | None  # the TLS or socket error that ended it, if any

    @property
    def connack_code(self) -> int | None:
        """The CONNACK return code (0 = accepted), None when no CONNACK came."""
        if len(self.received) >= 4 and self.received[0] == 0x20:
            return self.received[3]
        return None

    @property
    def accepted(self) -> bool:
        """Logged in, or any byte after the CONNACK (a PUBACK: the command was taken)."""
        return self.connack_code == 0 or len(self.received) > 4

    def describe(self) -> str:
        if self.connack_code is not None:
            return f"CONNACK code {self.connack_code}, {len(self.received)} bytes"
        return f"{len(self.received)} bytes" + (f", {self.error}" if self.error else "")


def raw_attempt(port: int, packets: bytes, ca: Path | None, timeout: float = 3.0) -> Attempt:
    """Send ``packets`` over TLS (``ca`` given: the client verifies the broker) or plain
    TCP, then read until the broker hangs up."""
    received, error = b"", None
    sock: socket.socket | None = None
    try:
        sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        if ca is not None:
            sock = client_context(ca).wrap_socket(sock, server_hostname="127.0.0.1")
        sock.sendall(packets)
        while chunk := sock.recv(4096):
            received += chunk
    except OSError as exc:  # ssl.SSLError included; a refusing broker may reset
        error = type(exc).__name__
    finally:
        if sock is not None:
            sock.close()
    return Attempt(received, error)
