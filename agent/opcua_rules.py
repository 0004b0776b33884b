"""Which OPC UA security a configuration gets, or why it is refused (contract section 10).

- A user and a certificate configured (``username``, ``password``, ``cert_file``,
  ``key_file``): ``Basic256Sha256`` ``SignAndEncrypt`` only, that user only, on any address.
- None of them, on a loopback address: anonymous, no security (only this machine can reach it).
- None of them, elsewhere: refused at start-up, unless ``allow_insecure`` (logged as a warning).

Pure settings validation (files read, nothing served): the OPC UA adapter applies it at
start and ``bdi-agent doctor`` runs the same rule, so both say the same thing.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Any, Literal

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from agent.config import OpcuaSettings
from agent.startup import StartupRefused

Mode = Literal["anonymous", "secure", "insecure"]
CREDENTIALS = ("username", "password", "cert_file", "key_file")


@dataclass(frozen=True)
class Security:
    mode: Mode
    username: str = ""
    password: str = ""
    cert: bytes = b""  # the certificate file's bytes (PEM or DER)
    key: bytes = b""  # the private key file's bytes (PEM or DER, no passphrase)
    cert_uri: str | None = None  # the certificate's application URI, if it names one


def is_loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name: it may resolve to any interface
        return False


def plan_security(cfg: OpcuaSettings) -> Security:
    """The security the server will run with; ``StartupRefused`` says what to set."""
    username, password, cert_file, key_file = (getattr(cfg, name) for name in CREDENTIALS)
    if username and password and cert_file and key_file:
        cert = _read(cert_file, "BDI_OPCUA__CERT_FILE")
        key = _read(key_file, "BDI_OPCUA__KEY_FILE")
        return Security("secure", username, password, cert, key, _check_pair(cert, key, cfg))
    missing = [f"BDI_OPCUA__{name.upper()}" for name in CREDENTIALS if not getattr(cfg, name)]
    if len(missing) < len(CREDENTIALS):
        raise StartupRefused(
            "OPC UA security is half configured: a user, a password, a certificate and its "
            f"key go together (missing {', '.join(missing)})"
        )
    if is_loopback(cfg.host):
        return Security("anonymous")
    if cfg.allow_insecure:
        return Security("insecure")
    raise StartupRefused(
        f"OPC UA on {cfg.host} (not a loopback address) needs a user and an encrypted channel: "
        "set BDI_OPCUA__USERNAME, BDI_OPCUA__PASSWORD, BDI_OPCUA__CERT_FILE and "
        "BDI_OPCUA__KEY_FILE (Basic256Sha256 SignAndEncrypt), or bind to 127.0.0.1, or set "
        "BDI_OPCUA__ALLOW_INSECURE=true to serve anonymous and unencrypted anyway"
    )


def _read(path: Any, setting: str) -> bytes:
    try:
        return bytes(path.read_bytes())
    except OSError as exc:
        raise StartupRefused(f"{setting} {path} cannot be read: {exc.strerror}") from None


def cert_format(content: bytes) -> str:
    return "pem" if content.lstrip().startswith(b"-----BEGIN") else "der"


def _check_pair(cert_bytes: bytes, key_bytes: bytes, cfg: OpcuaSettings) -> str | None:
    """Parse both now (a wrong file is a start-up refusal, not a server that fails at its
    first client) and return the certificate's application URI."""
    try:
        if cert_format(cert_bytes) == "pem":
            cert = x509.load_pem_x509_certificate(cert_bytes)
        else:
            cert = x509.load_der_x509_certificate(cert_bytes)
    except ValueError as exc:
        raise StartupRefused(
            f"BDI_OPCUA__CERT_FILE {cfg.cert_file} is not an X.509 certificate ({exc})"
        ) from None
    try:
        if cert_format(key_bytes) == "pem":
            key = serialization.load_pem_private_key(key_bytes, None)
        else:
            key = serialization.load_der_private_key(key_bytes, None)
    except (ValueError, TypeError) as exc:  # TypeError: the key has a passphrase
        raise StartupRefused(
            f"BDI_OPCUA__KEY_FILE {cfg.key_file} is not an unencrypted private key ({exc})"
        ) from None
    if key.public_key() != cert.public_key():
        raise StartupRefused(
            f"BDI_OPCUA__KEY_FILE {cfg.key_file} is not the key of {cfg.cert_file}"
        )
    try:
        names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    except x509.ExtensionNotFound:
        return None
    uris = names.value.get_values_for_type(x509.UniformResourceIdentifier)
    return uris[0] if uris else None
