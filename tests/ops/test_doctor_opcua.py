"""`bdi-agent doctor` on the OPC UA settings: the adapter's start-up rule, files, port."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path
from typing import Any

from asyncua.crypto.cert_gen import setup_self_signed_certificate
from cryptography.x509.oid import ExtendedKeyUsageOID

from agent.config import Settings
from agent.ops.doctor.check import FAIL, OK, WARN, Check, Context
from agent.ops.doctor.opcua import check_opcua
from tests.conftest import agent_settings


def doctor(tmp_path: Path, **opcua: Any) -> dict[str, Check]:
    settings: Settings = agent_settings(tmp_path / "data", opcua=opcua)
    return {c.name: c for c in check_opcua(Context(settings))}


def certificate(tmp_path: Path, name: str) -> tuple[Path, Path]:
    key, cert = tmp_path / f"{name}.pem", tmp_path / f"{name}.der"
    asyncio.run(
        setup_self_signed_certificate(
            key, cert, f"urn:bdi:test:{name}", "localhost", [ExtendedKeyUsageOID.SERVER_AUTH], {}
        )
    )
    return key, cert


def test_off_and_the_refusals_the_adapter_would_give(tmp_path: Path) -> None:
    off = doctor(tmp_path)
    assert off["opcua"].status == OK and "OPC UA off" in off["opcua"].message
    exposed = doctor(tmp_path, enabled=True, host="0.0.0.0", port=0)["opcua"]
    assert exposed.status == FAIL and "BDI_OPCUA__ALLOW_INSECURE" in exposed.message
    half = doctor(tmp_path, enabled=True, username="plc", password="secret")["opcua"]
    assert half.status == FAIL and "BDI_OPCUA__CERT_FILE" in half.message
    missing = doctor(
        tmp_path,
        enabled=True,
        username="plc",
        password="secret",
        cert_file=str(tmp_path / "none.der"),
        key_file=str(tmp_path / "none.pem"),
    )["opcua"]
    assert missing.status == FAIL and "cannot be read" in missing.message
    insecure = doctor(tmp_path, enabled=True, host="0.0.0.0", port=0, allow_insecure=True)
    assert insecure["opcua"].status == WARN
    assert insecure["opcua_port"].status == OK


def test_certificate_and_key_must_match_and_the_port_be_free(tmp_path: Path) -> None:
    server_key, server_cert = certificate(tmp_path, "server")
    other_key, _ = certificate(tmp_path, "other")
    user = {"enabled": True, "username": "plc", "password": "secret"}
    crossed = doctor(tmp_path, **user, cert_file=str(server_cert), key_file=str(other_key))
    assert crossed["opcua"].status == FAIL and "is not the key of" in crossed["opcua"].message
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        busy = doctor(
            tmp_path, **user, port=port, cert_file=str(server_cert), key_file=str(server_key)
        )
        assert busy["opcua"].status == OK and "SignAndEncrypt" in busy["opcua"].message
        assert busy["opcua_port"].status == FAIL and "BDI_OPCUA__PORT" in busy["opcua_port"].fix
    free = doctor(tmp_path, **user, port=port, cert_file=str(server_cert), key_file=str(server_key))
    assert free["opcua_port"].status == OK
