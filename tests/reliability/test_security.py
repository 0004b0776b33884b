"""Security promises of the contract, tried against the real parts.

- HTTP (section 7): with an API key set, every operation of the live ``/openapi.json``
  refuses a missing, wrong or nearly right key with the contract's 401 body, and the key
  is compared with ``hmac.compare_digest`` on the whole of both byte strings.
- MQTT (sections 5, 8): a mosquitto with only a TLS listener (a CA made in the test) and
  a password file lets the agent in with the right CA and password and a full fit/infer
  round trip works; anonymous, wrong-password and plain-TCP clients get nothing through;
  an agent refused for its password, its CA or the broker's host name stays up, keeps
  retrying and connects once the broker is fixed.
- Storage (section 4): no id, however hostile, names a path outside the data root.
"""

# Fixtures are imported from the adapter tests' modules.
# ruff: noqa: F811

from __future__ import annotations

import base64
import functools
import hashlib
import json
import os
import re
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from structlog.testing import capture_logs

import adapters.http_routes_guard as guard
from agent.parsing import parse_command
from engine.datasets import DatasetStore
from engine.errors import BadInput
from engine.keys import MAX_ID_BYTES, RoiKey, from_b64_name, split_base_name
from engine.memory import Memory, MemoryInfo, new_model_version
from engine.store import ModelStore
from tests.adapters.conftest import mqtt_agent, wait_connected  # noqa: F401 (fixture)
from tests.adapters.mqtt_support import Broker
from tests.adapters.test_http_support import Server, serve  # noqa: F401 (fixture)
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
from tests.synthetic.discs import encode_png, make_set

SECURITY = "security"
KEY = "bdi-7Rq2xZ0pL9sW4vN8kT1mY6cH3jF5gD0a"
PUBLIC_PATHS = ("/health", "/docs", "/docs/oauth2-redirect", "/openapi.json")
MM_PER_PX = 0.2


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


# -- 1. the HTTP API key ---------------------------------------------------------------


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
                response = anonymous.request(method, path, headers={header: KEY})
                kind = None  # /metrics is text; the rest answer JSON
                if response.headers.get("content-type", "").startswith("application/json"):
                    body = response.json()
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


# -- 2. MQTT over TLS with a password file ---------------------------------------------


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


# -- 3. ids never leave the data root --------------------------------------------------

HOSTILE_IDS = [
    "..",
    ".",
    "../../x",
    "/etc",
    "/etc/passwd",
    "a/b",
    "C:\\x",
    "..\\..\\y",
    "\\\\server\\share",
    "~",
    "$HOME",
    "%2e%2e%2f",
    "???",  # base64 "Pz8_": the "__" separator becomes "___"
    "a\u00bf",
    "x" * MAX_ID_BYTES,
    "\u00e9" * (MAX_ID_BYTES // 2),
    "x" * (MAX_ID_BYTES + 1),
    "",
    " ",
    "a\x00b",
    "line\nbreak",
    "\ud800",  # a lone surrogate, as JSON "\ud800" decodes
    "nul\x00",
    "\u202e\u2066rtl",
    "CON",
    "a" + "\u0301" * 40,
]
SAFE_COMPONENT = re.compile(r"[A-Za-z0-9_-]+")
RECIPE = re.compile(r"[a-z0-9._-]{1,80}")


@pytest.fixture
def hypothesis_home(tmp_path: Path) -> Iterator[None]:
    """Hypothesis's caches go to this test's temp dir, not a .hypothesis/ in the repo."""
    from hypothesis.configuration import set_hypothesis_home_dir

    set_hypothesis_home_dir(tmp_path / "hypothesis")
    yield
    set_hypothesis_home_dir(None)


def _tiny_memory() -> Memory:
    info = MemoryInfo(
        model_version=new_model_version(),
        created_at="2026-01-01T00:00:00Z",
        mm_per_px=MM_PER_PX,
        n_embeddings=8,
        coreset_size=4,
        coreset_rate_requested=0.5,
        coreset_rate_applied=0.5,
        ok_scale=0.3,
    )
    bank = np.ones((4, 8), dtype=np.float16)
    return Memory(bank, np.zeros(4, dtype=np.int32), (2, 2), info)


def _decoded(name: str) -> str | None:
    """The id a file-name component encodes, None when it encodes none."""
    try:
        return from_b64_name(name)
    except ValueError:
        return None


def _split(stem: str) -> tuple[str, str] | None:
    try:
        return split_base_name(stem)
    except ValueError:
        return None


@functools.cache
def _png() -> bytes:
    return encode_png(make_set(seed=3, n_ok=1, size=96)[0].image)


def _path_problems(key: RoiKey, root: Path) -> list[str]:
    """Every path the engine derives for ``key``, checked and then really written."""
    problems: list[str] = []
    models, datasets = ModelStore(root / "models"), DatasetStore(root / "datasets")
    paths = {
        "memory": models.memory_path(key),
        "calibration": models.calibration_path(key),
        "ok": datasets.folder(key, "ok"),
        "ng": datasets.folder(key, "ng"),
    }
    for name, path in paths.items():
        if not path.resolve().is_relative_to(root.resolve()) or path.resolve() == root.resolve():
            problems.append(f"{name} path {path} is outside {root}")
        for part in path.relative_to(root).parts:
            if part in (".", "..") or len(part.encode()) > 255:
                problems.append(f"{name} path component {part!r}")
    model_parts = paths["memory"].relative_to(models.root).parts
    if len(model_parts) != 4 or model_parts[0] != "recipes":
        problems.append(f"memory path has {len(model_parts)} components: {model_parts}")
    else:
        _, recipe, model_dir, file = model_parts
        stem = file.removesuffix(".npz")
        if not RECIPE.fullmatch(recipe) or recipe != key.recipe_id:
            problems.append(f"recipe component {recipe!r}")
        if not SAFE_COMPONENT.fullmatch(model_dir) or _decoded(model_dir) != key.model_key:
            problems.append(f"model_key component {model_dir!r}")
        if not SAFE_COMPONENT.fullmatch(stem) or _split(stem) != (key.role_id, key.roi_id):
            problems.append(f"file name {file!r} does not give back the ids")
    sample_parts = paths["ok"].relative_to(datasets.root).parts
    if len(sample_parts) != 4 or [_decoded(p) for p in sample_parts[1:3]] != [
        key.role_id,
        key.roi_id,
    ]:
        problems.append(f"dataset folder {sample_parts} does not give back the ids")
    # Written for real, through the engine's own atomic writers, then read back.
    models.save_memory(key, _tiny_memory())
    models.save_calibration(key, {"threshold": 1.0})
    stored = datasets.add(key, "ok", _png(), {"mm_per_px": MM_PER_PX})
    if stored.image.parent != paths["ok"] or not paths["memory"].is_file():
        problems.append("the files were not written where the paths said")
    if (models.load_calibration(key) or {}).get("threshold") != 1.0:
        problems.append("the calibration does not read back")
    if [s.meta.get("role_id") for s in datasets.list(key, "ok")][-1:] != [key.role_id]:
        problems.append("the sample does not read back under its ids")
    return problems


@pytest.mark.reliability(SECURITY, "ids never escape the data root (hypothesis, any unicode)")
def test_no_id_names_a_path_outside_the_data_root(
    tmp_path: Path, hypothesis_home, record_property
) -> None:
    from hypothesis import HealthCheck, example, given, settings
    from hypothesis import strategies as st

    root = tmp_path / "parent" / "data"
    sentinel = tmp_path / "parent" / "sentinel.txt"
    sentinel.parent.mkdir(parents=True)
    sentinel.write_text("untouched")
    any_text = st.text(st.characters(exclude_categories=[]), max_size=40)  # surrogates too
    printable = st.text(st.characters(exclude_categories=["Cc", "Cs"]), min_size=1, max_size=30)
    path_like = st.lists(st.sampled_from(["..", ".", "/", "\\", "~", "a", "C:", "%2f"]), min_size=1,
                         max_size=12).map("".join)  # fmt: skip
    long_text = st.text(st.characters(exclude_categories=["Cc"]), min_size=20, max_size=95)
    ids = st.one_of(st.sampled_from(HOSTILE_IDS), any_text, printable, path_like, long_text)
    counts = {"tried": 0, "refused": 0}
    problems: list[str] = []

    @settings(
        max_examples=300,
        deadline=None,
        database=None,
        derandomize=True,  # the same inputs on every run: a failure reproduces
        suppress_health_check=list(HealthCheck),
    )
    @given(role=ids, roi=ids, model_key=st.none() | ids, recipe=st.none() | ids)
    @example(role="???", roi="x", model_key=None, recipe=None)
    @example(role="../../x", roi="..", model_key="/etc", recipe="../../x")
    @example(role="x" * MAX_ID_BYTES, roi="x" * MAX_ID_BYTES, model_key=None, recipe="A" * 99)
    @example(role="\ud800", roi="x", model_key=None, recipe=None)
    def check(role: str, roi: str, model_key: str | None, recipe: str | None) -> None:
        counts["tried"] += 1
        try:
            key = RoiKey.of(role, roi, recipe, model_key)
        except BadInput:
            counts["refused"] += 1
            return
        except Exception as exc:  # anything else is a crash the caller would see as a 500
            problems.append(f"{role!r}/{roi!r}/{model_key!r}/{recipe!r}: {exc!r}")
            return
        if (key.role_id, key.roi_id) != (role, roi):
            problems.append(f"{role!r}/{roi!r} became {key.role_id!r}/{key.roi_id!r}")
        try:
            found = _path_problems(key, root)
        except Exception as exc:  # a write or read that failed for this id
            found = [repr(exc)]
        problems.extend(f"{role!r}/{roi!r}/{model_key!r}/{recipe!r}: {p}" for p in found)

    check()
    outside = [p for p in root.rglob("*") if not p.resolve().is_relative_to(root.resolve())]
    siblings = sorted(p.name for p in root.parent.iterdir())
    if outside or siblings != ["data", "sentinel.txt"] or sentinel.read_text() != "untouched":
        problems.append(f"outside the root: {outside[:3]}, next to it: {siblings}")
    record_property("tried", counts["tried"])
    record_property("failures", len(problems))
    record_property("lost", 0)
    record_property(
        "detail",
        f"{counts['tried'] - counts['refused']} id sets stored inside the root, "
        f"{counts['refused']} refused as bad_request",
    )
    assert not problems, problems[:10]


class WrongPremise(Exception):
    """The test's own inputs do not exercise the case: a failure, never an xfail."""


@pytest.mark.reliability(SECURITY, "stored ROIs list back under their own ids")
def test_stored_rois_list_back_under_their_own_ids(tmp_path: Path, record_property) -> None:
    """A role whose base64 ends in '_' ("???" is "Pz8_") must still be listed: the MQTT
    adapter republishes the state of every listed ROI on connect, and backup, restore and
    doctor list ROIs the same way."""
    models = ModelStore(tmp_path / "models")
    pairs = [("Inspection", "ROI_1"), ("???", "x"), ("a\u00bf", "b"), ("Disc??", "?!?"),
             ("ROI_1?", "ROI_1"), ("../../x", "..")]  # fmt: skip
    keys = [RoiKey.of(role, roi) for role, roi in pairs]
    if sum("___" in key.base_name for key in keys) < 4:
        raise WrongPremise([key.base_name for key in keys])
    for key in keys:
        models.save_memory(key, _tiny_memory())
    listed = set(models.roi_keys())
    missing = [k for k in keys if k not in listed]
    record_property("tried", len(keys))
    record_property("failures", len(missing))
    record_property("lost", 0)  # the files are there; the listing misses them
    record_property("detail", f"{len(keys) - len(missing)}/{len(keys)} stored ROIs listed back")
    assert not missing, [(k.role_id, k.roi_id) for k in missing]


# The live agent: ids that try to climb out, then everything outside the root compared.
ACCEPTED = [
    ("../../x", "../../x", {}),
    ("..", ".", {}),
    ("/etc", "passwd", {"recipe_id": "../../etc"}),
    ("a/b", "c/../../d", {"model_key": "../../m"}),
    ("C:\\x", "..\\..\\y", {}),
    ("x" * MAX_ID_BYTES, "\u00e9" * (MAX_ID_BYTES // 2), {}),
    ("???", "~", {}),
]
REFUSED = [("x" * (MAX_ID_BYTES + 1), "r"), ("a\x00b", "r"), (" ", "r"), ("line\nbreak", "r")]


def _snapshot(parent: Path, data_root: Path) -> dict[str, str]:
    """sha256 of every file under ``parent`` but outside ``data_root`` (dirs as 'dir')."""
    out = {}
    for path in sorted(parent.rglob("*")):
        if path == data_root or path.is_relative_to(data_root):
            continue
        out[str(path.relative_to(parent))] = (
            "dir" if path.is_dir() else hashlib.sha256(path.read_bytes()).hexdigest()
        )
    return out


@pytest.mark.reliability(SECURITY, "live agent: traversal ids in fit_ok/send_ng stay in the root")
def test_a_live_agent_keeps_every_id_inside_the_data_root(
    tmp_path: Path, serve, ok_pngs, record_property
) -> None:
    parent = tmp_path / "parent"
    data_root = parent / "data"
    for name, text in [("x", "x"), ("passwd", "root:x:0:0"), ("etc/passwd", "etc"), ("m", "m")]:
        (parent / name).parent.mkdir(parents=True, exist_ok=True)
        (parent / name).write_text(text)
    before = _snapshot(parent, data_root)
    server: Server = serve(data_root=data_root)
    client = server.client
    problems: list[str] = []
    tried = 0

    def upload(route: str, form: dict[str, str], images: list[bytes]) -> httpx.Response:
        # Hostile client-side file names too: the agent names stored samples itself.
        parts = [("images", ("../../evil.png", data, "image/png")) for data in images]
        return client.post(route, data=form, files=parts)

    for role, roi, extra in ACCEPTED:
        form = {"role_id": role, "roi_id": roi, "mm_per_px": str(MM_PER_PX), **extra}
        fit = upload("/fit_ok", form, ok_pngs[:2])
        ng = upload("/send_ng", form, ok_pngs[2:3])
        query = {"role_id": role, "roi_id": roi, **extra}
        scores = {"ok_scores": [0.1, 0.2], "ng_scores": [0.9]}
        calibration = client.post("/calibrate_ng", json={**query, **scores})
        manifest = client.get("/manifest", params=query)
        deleted = client.delete(
            "/datasets/file", params={**query, "label": "ok", "file": "../../x"}
        )
        tried += 5
        body = manifest.json()
        outcome = (
            fit.status_code,
            ng.status_code,
            calibration.status_code,
            manifest.status_code,
            body.get("datasets"),
            bool(body.get("memory", {}).get("exists")),
            deleted.status_code,
        )
        if outcome != (200, 200, 200, 200, {"ok": 2, "ng": 1}, True, 400):
            problems.append(f"{role!r}/{roi!r}: {outcome} {fit.text[:120]}")
    for role, roi in REFUSED:
        form = {"role_id": role, "roi_id": roi, "mm_per_px": str(MM_PER_PX)}
        response = upload("/fit_ok", form, ok_pngs[:1])
        tried += 1
        if response.status_code != 400 or response.json()["error"]["kind"] != "bad_request":
            problems.append(f"{role!r}: {response.status_code} {response.text[:120]}")
    surrogate = client.post(  # JSON may carry a lone surrogate ("\ud800"): no file name can
        "/calibrate_ng",
        content=b'{"role_id": "\\ud800", "roi_id": "r", "ok_scores": [0.1]}',
        headers={"content-type": "application/json"},
    )
    tried += 1
    if surrogate.status_code != 400:
        problems.append(f"lone surrogate id: {surrogate.status_code} {surrogate.text[:120]}")

    after = _snapshot(parent, data_root)
    changed = sorted(set(before.items()) ^ set(after.items()))
    if changed:
        problems.append(f"outside the data root: {changed[:5]}")
    sent = {role for role, _, _ in ACCEPTED} | {roi for _, roi, _ in ACCEPTED}
    keys = {extra.get("model_key", roi) for _, roi, extra in ACCEPTED}
    stored = [p for p in data_root.rglob("*") if p.is_file()]
    for path in stored:
        rel = path.relative_to(data_root).parts
        if not path.resolve().is_relative_to(data_root.resolve()):
            problems.append(f"{path} resolves outside the root")
        elif rel[0] == "datasets" and not (
            len(rel) == 6 and {_decoded(p) for p in rel[2:4]} <= sent
        ):
            problems.append(f"sample {rel} is not under the b64 of the ids sent")
        elif rel[:2] == ("models", "recipes") and not (len(rel) == 5 and _decoded(rel[3]) in keys):
            problems.append(f"model {rel} is not under the b64 of a model key sent")
    record_property("tried", tried)
    record_property("failures", len(problems))
    record_property("lost", 0)
    record_property(
        "detail",
        f"{len(ACCEPTED)} hostile id sets stored and read back, {len(REFUSED) + 1} refused; "
        f"{len(stored)} files, all under the data root; nothing outside changed",
    )
    assert not problems, problems
