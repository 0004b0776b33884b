"""Doctor check of the OPC UA settings: the adapter's own start-up rule, and its port."""

from __future__ import annotations

import errno
import socket

from agent.opcua_rules import plan_security
from agent.ops.doctor.check import FAIL, OK, WARN, Check, Context
from agent.startup import StartupRefused


def check_opcua(context: Context) -> list[Check]:
    cfg = context.settings.opcua
    if not cfg.enabled:
        return [Check("opcua", OK, "OPC UA off (BDI_OPCUA__ENABLED=false)")]
    try:
        # The same rule `bdi-agent run` applies: files read, certificate and key parsed
        # and matched, so a configuration the doctor passes is one the adapter starts with.
        security = plan_security(cfg)
    except StartupRefused as exc:
        return [Check("opcua", FAIL, str(exc), "set the BDI_OPCUA__* settings it names")]
    checks = [_security_check(security.mode, cfg.host), _port_check(cfg.host, cfg.port)]
    return checks


def _security_check(mode: str, host: str) -> Check:
    if mode == "secure":
        return Check(
            "opcua", OK, "user and Basic256Sha256 SignAndEncrypt; certificate and key match"
        )
    if mode == "anonymous":
        return Check("opcua", OK, f"anonymous on {host} (loopback: only this machine can connect)")
    return Check(
        "opcua",
        WARN,
        f"anonymous and unencrypted on {host} (BDI_OPCUA__ALLOW_INSECURE=true)",
        "set BDI_OPCUA__USERNAME, __PASSWORD, __CERT_FILE and __KEY_FILE",
    )


def _port_check(host: str, port: int) -> Check:
    if port == 0:
        return Check("opcua_port", OK, "port 0: the agent takes any free port")
    where = f"{host}:{port}"
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as asyncio binds
        try:
            sock.bind((host, port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                return Check(
                    "opcua_port",
                    FAIL,
                    f"{where} is in use (another program, or an agent already running)",
                    f"stop it (`ss -ltnp 'sport = :{port}'` names it) or set BDI_OPCUA__PORT",
                )
            return Check(
                "opcua_port",
                FAIL,
                f"cannot bind {where}: {exc.strerror}",
                "set BDI_OPCUA__HOST to an address of this PC",
            )
    return Check("opcua_port", OK, f"{where} is free")
