"""Security promises of the contract, tried against the real parts: the HTTP API key.

HTTP (section 7): with an API key set, every operation of the live ``/openapi.json``
refuses a missing, wrong or nearly right key with the contract's 401 body, and the key is
compared with ``hmac.compare_digest`` on the whole of both byte strings.
"""

# Fixtures are imported from the adapter tests' modules.
# ruff: noqa: F811

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest

import adapters.http.routes_guard as guard
from tests.adapters.test_http_support import Server, serve  # noqa: F401 (fixture)
from tests.reliability.hostile import SECURITY

KEY = "bdi-7Rq2xZ0pL9sW4vN8kT1mY6cH3jF5gD0a"
# The console page holds no data: it asks for the key before it reads any.
PUBLIC_PATHS = ("/health", "/docs", "/docs/oauth2-redirect", "/openapi.json", "/ui/")


def _flip(text: str, at: int) -> str:
    """``text`` with the byte at ``at`` changed (still ASCII, same length)."""
    return text[:at] + chr(ord(text[at]) ^ 0x01) + text[at + 1 :]


# (name, headers, query): every way of not quite presenting the key.
WRONG_KEYS: list[tuple[str, dict[str, str | bytes], dict[str, str]]] = [
    ("missing", {}, {}),
    ("empty", {"X-API-Key": ""}, {}),
    ("wrong", {"X-API-Key": "wrong"}, {}),
    ("first byte differs", {"X-API-Key": _flip(KEY, 0)}, {}),
    ("middle byte differs", {"X-API-Key": _flip(KEY, len(KEY) // 2)}, {}),
    ("last byte differs", {"X-API-Key": _flip(KEY, len(KEY) - 1)}, {}),
    ("one byte longer", {"X-API-Key": KEY + "0"}, {}),
    ("one byte shorter", {"X-API-Key": KEY[:-1]}, {}),
    ("prefix only", {"X-API-Key": KEY[:4]}, {}),
    ("case swapped", {"X-API-Key": KEY.swapcase()}, {}),
    ("non-ASCII last byte", {"X-API-Key": KEY[:-1].encode() + b"\xff"}, {}),
    ("key plus non-ASCII byte", {"X-API-Key": KEY.encode() + b"\x80"}, {}),
    ("non-ASCII only", {"X-API-Key": "é".encode() * (len(KEY) // 2)}, {}),
    ("as a bearer token", {"Authorization": f"Bearer {KEY}"}, {}),
    ("in the query string", {}, {"api_key": KEY, "X-API-Key": KEY}),
]


def _operations(client: httpx.Client) -> list[tuple[str, str]]:
    """Every (method, path) the live server documents, and one it does not."""
    spec = client.get("/openapi.json", headers={"X-API-Key": KEY}).json()
    operations = [(method.upper(), path) for path, ops in spec["paths"].items() for method in ops]
    return [op for op in operations if op[1] not in PUBLIC_PATHS] + [("GET", "/not-a-route")]


def _refusal_problem(response: httpx.Response) -> str | None:
    """None when ``response`` is the contract's 401 body (and does not echo the key)."""
    try:
        body = response.json()
    except ValueError:
        return f"{response.status_code}, not JSON"
    error = body.get("error") if isinstance(body, dict) else None
    if response.status_code != 401 or not isinstance(error, dict):
        return f"{response.status_code} {str(body)[:80]}"
    if error.get("code") != 401 or error.get("kind") != "unauthorized" or not error["message"]:
        return f"error body {error}"
    if not body.get("request_id") or body["request_id"] != response.headers.get("x-request-id"):
        return "request_id missing or not echoed"
    if not body.get("recipe_id"):
        return "recipe_id missing"
    if KEY in response.text:
        return "the reply holds the key"
    return None


@pytest.mark.reliability(SECURITY, "API key: every operation, 15 wrong keys, the right one")
def test_every_operation_needs_the_api_key(serve, record_property) -> None:
    server: Server = serve(api_key=KEY)
    problems: list[str] = []
    tried = 0
    with httpx.Client(base_url=server.url, timeout=60) as anonymous:
        operations = _operations(anonymous)
        for method, path in operations:
            for name, headers, query in WRONG_KEYS:
                tried += 1
                response = anonymous.request(method, path, headers=headers, params=query)
                problem = _refusal_problem(response)
                if problem:
                    problems.append(f"{method} {path} with key {name}: {problem}")
        for path in PUBLIC_PATHS:  # decided public: probes and the API's own documents
            tried += 1
            response = anonymous.get(path)
            if response.status_code != 200 or KEY in response.text:
                problems.append(f"public {path}: {response.status_code}")
        # The right key, in either spelling of the header name, gets past the guard (the
        # route then answers as it would: most with 400, for the missing fields).
        for method, path in operations:
            for header in ("X-API-Key", "x-api-key"):
                tried += 1
                # Streamed: /events, let in, never ends; its status and type say enough.
                with anonymous.stream(method, path, headers={header: KEY}) as response:
                    kind = None  # /metrics is text, /events a stream; the rest answer JSON
                    if response.headers.get("content-type", "").startswith("application/json"):
                        body = json.loads(response.read())
                        error = body.get("error") if isinstance(body, dict) else None
                        kind = error.get("kind") if isinstance(error, dict) else None
                if response.status_code == 401 or kind == "unauthorized":
                    problems.append(f"{method} {path} refused the right key ({header})")
    record_property("tried", tried)
    record_property("failures", len(problems))
    record_property("lost", 0)
    record_property(
        "detail",
        f"{len(operations)} operations x {len(WRONG_KEYS)} wrong keys: 401 contract body; "
        f"right key passes; {len(PUBLIC_PATHS)} public paths open",
    )
    assert len(operations) >= 17
    assert not problems, problems[:10]


@pytest.mark.reliability(SECURITY, "API key compared with hmac.compare_digest, whole bytes")
def test_the_key_is_compared_in_constant_time(serve, monkeypatch, record_property) -> None:
    """Observes the guard's comparison (the real ``compare_digest`` still decides): one
    call per request on the whole presented bytes against the whole key, wherever the
    mismatch is and whatever the length, so no early exit can leak where a guess went
    wrong. No timing is measured: the property is which comparison runs."""
    server: Server = serve(api_key=KEY)
    real = guard.hmac.compare_digest
    calls: list[tuple[Any, Any, bool]] = []

    def observed(a: Any, b: Any) -> bool:
        result = real(a, b)
        calls.append((a, b, result))
        return result

    monkeypatch.setattr(guard.hmac, "compare_digest", observed)
    expected = KEY.encode()
    presented: list[bytes | None] = [
        None,
        b"",
        expected,
        *(headers["X-API-Key"] for _, headers, _ in WRONG_KEYS if "X-API-Key" in headers),
    ]
    problems: list[str] = []
    with httpx.Client(base_url=server.url, timeout=60) as client:
        for value in presented:
            sent = value.encode() if isinstance(value, str) else value
            before = len(calls)
            headers = {} if sent is None else {"X-API-Key": sent}
            response = client.get("/stats", headers=headers)
            made = [c for c in calls[before:] if expected in (c[0], c[1])]
            right = sent == expected
            if len(made) != 1:
                problems.append(f"{sent!r}: {len(made)} compare_digest calls")
                continue
            first, second, result = made[0]
            given, key = (first, second) if second == expected else (second, first)
            if not (isinstance(given, bytes) and isinstance(key, bytes)):
                problems.append(f"{sent!r}: compared {type(given).__name__}, not bytes")
            elif given != (sent or b"") or key != expected:
                problems.append(f"{sent!r}: compared {given!r} with a part of the key")
            if result != right or (response.status_code == 401) == right:
                problems.append(f"{sent!r}: {response.status_code} (compare said {result})")
    record_property("tried", len(presented))
    record_property("failures", len(problems))
    record_property("lost", 0)
    record_property(
        "detail",
        f"{len(calls)} compare_digest calls for {len(presented)} requests, each on the whole "
        "presented bytes and the whole key",
    )
    assert not problems, problems
