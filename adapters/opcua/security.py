"""Who may connect to the OPC UA server, and how (contract section 10).

- A user and a certificate configured (``username``, ``password``, ``cert_file``,
  ``key_file``): ``Basic256Sha256`` ``SignAndEncrypt`` only, that user only, on any address.
- None of them, on a loopback address: anonymous, no security (only this machine can reach it).
- None of them, elsewhere: refused at start-up, unless ``allow_insecure`` (logged as a warning).

Everything is decided and every file read when the adapter is built, so a bad
configuration stops ``bdi-agent run`` with one line before anything listens. The rule
itself is ``agent.opcua_rules`` (``bdi-agent doctor`` runs it too).
"""

from __future__ import annotations

import hmac
from typing import Any

from asyncua import Server, ua
from asyncua.crypto.permission_rules import PermissionRuleset, User, UserRole
from asyncua.crypto.security_policies import SecurityPolicyFactory, SecurityPolicyNone
from asyncua.server.user_managers import UserManager

from agent.opcua_rules import (
    CREDENTIALS,
    Mode,
    Security,
    cert_format,
    is_loopback,
    plan_security,
)

__all__ = ["CREDENTIALS", "Mode", "Security", "apply_security", "is_loopback", "plan_security"]


async def apply_security(server: Server, security: Security) -> None:
    """Endpoints and identity tokens of ``server``, before it starts."""
    server.allow_remote_admin(False)
    if security.mode != "secure":
        server.set_security_policy([ua.SecurityPolicyType.NoSecurity])
        server.set_identity_tokens([ua.AnonymousIdentityToken])
        return
    await server.load_certificate(security.cert, cert_format(security.cert))
    await server.load_private_key(security.key, None, cert_format(security.key))
    server.set_security_policy([ua.SecurityPolicyType.Basic256Sha256_SignAndEncrypt])
    server.set_identity_tokens([ua.UserNameIdentityToken])
    server.iserver.set_user_manager(OneUser(security.username, security.password))
    # asyncua opens an unsecured channel for anyone (clients need one to ask for the
    # endpoints) and then serves a session on it like on any other: the configured user
    # would read and call in clear text. On that channel, nothing but discovery.
    server._policies.append(
        SecurityPolicyFactory(
            SecurityPolicyNone, ua.MessageSecurityMode.None_, permission_ruleset=DiscoveryOnly()
        )
    )


class DiscoveryOnly(PermissionRuleset):
    """Every request that needs a session is refused (GetEndpoints and the session
    handshake itself are not checked by asyncua)."""

    def check_validity(self, user: Any, action_type: Any, body: Any) -> bool:
        return False


class OneUser(UserManager):
    """The configured user, compared in constant time; anyone else is refused."""

    def __init__(self, username: str, password: str) -> None:
        self._username = username.encode()
        self._password = password.encode()

    def get_user(
        self,
        iserver: Any,
        username: str | None = None,
        password: str | None = None,
        certificate: Any = None,
    ) -> User | None:
        name_ok = hmac.compare_digest((username or "").encode(), self._username)
        password_ok = hmac.compare_digest((password or "").encode(), self._password)
        return User(role=UserRole.User, name=username) if name_ok and password_ok else None
