"""Noise on the command topics (contract section 5, "bad messages"): 10 000 messages of
random bytes, plus random JSON and a few pathological payloads, on random
``bdi/<agent>/cmd/<command>`` topics, known command names and unknown ones.

Every message on a command topic is answered once on ``result/<command>`` (the adapter
also answers an unknown name, with ``bad_request``), a payload that is not JSON gets
``bad_request`` without a request id, nothing is ``internal``, and afterwards the agent is
still connected and judges a normal inference. All messages go QoS 1, so none may be lost.
"""

# Fixtures come from tests/adapters/conftest.py.
# ruff: noqa: F811

from __future__ import annotations

import base64
import json
import random
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest

from adapters.mqtt.adapter import MqttAdapter
from agent.bootstrap import Agent
from agent.commands import COMMANDS
from agent.errors import STATUS_BY_KIND
from agent.parsing import parse_command
from tests.adapters.conftest import mqtt_agent  # noqa: F401
from tests.adapters.mqtt_support import Broker
from tests.reliability.hostile import DEEP_JSON, NASTY_SCALARS

AGENT = "noise"
PREFIX = f"bdi/{AGENT}"
ROI = {"role_id": "Inspection", "roi_id": "Inspection_1"}
N_RANDOM = 10_000  # messages of random bytes
N_JSON = 600  # messages of random JSON
SEED = 20_251_201
NOT_JSON = "payload is not valid JSON"

FIELDS = (
    "role_id",
    "roi_id",
    "model_key",
    "recipe_id",
    "mm_per_px",
    "images",
    "image",
    "image_path",
    "shape",
    "items",
    "label",
    "file",
    "ok_scores",
    "heatmap",
    "memory_fit",
)
UNKNOWN_NAMES = ("nope", "INFER", "fit-ok", "ünï©ødé", "x" * 200, " ", "%00", "infer ", "..")
NAME_ALPHABET = "abcdefghijklmnopqrstuvwxyz_-.:~0123456789éß"


@pytest.fixture
def quick_broker(tmp_path: Path) -> Iterator[Broker]:
    """A broker of this test's own, without persistence: the shared set-up saves its
    database after every change, which would make 10 000 messages take minutes."""
    server = Broker(tmp_path / "mosquitto", "allow_anonymous true\npersistence false\n")
    server.start()
    yield server
    server.stop()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def junk(rng: random.Random, depth: int = 0) -> Any:
    """A random JSON value, nasty scalars at the leaves."""
    roll = rng.random()
    if depth >= 3 or roll < 0.55:
        return rng.choice(NASTY_SCALARS) if rng.random() < 0.7 else rng.randint(-(10**9), 10**9)
    if roll < 0.8:
        return [junk(rng, depth + 1) for _ in range(rng.randint(0, 4))]
    keys = [*rng.sample(FIELDS, rng.randint(0, 3)), str(rng.random())]
    return {key: junk(rng, depth + 1) for key in keys}


def command_name(rng: random.Random) -> str:
    if rng.random() < 0.75:
        return rng.choice(sorted(COMMANDS))
    if rng.random() < 0.5:
        return rng.choice(UNKNOWN_NAMES)
    return "".join(rng.choice(NAME_ALPHABET) for _ in range(rng.randint(1, 20)))


def noise(seed: int) -> list[tuple[str, bytes]]:
    """(command name, payload): random bytes, random JSON objects (with unique request ids
    when they carry one, so no read command is a duplicate), and pathological payloads."""
    rng = random.Random(seed)
    messages: list[tuple[str, bytes]] = []
    for _ in range(N_RANDOM):
        size = rng.choice([0, 1, 2, 8, 64, 200]) if rng.random() < 0.3 else rng.randint(0, 300)
        if rng.random() < 0.002:
            size = rng.randint(100_000, 1_000_000)
        messages.append((command_name(rng), rng.randbytes(size)))
    for i in range(N_JSON):
        body = {key: junk(rng, 1) for key in rng.sample(FIELDS, rng.randint(0, 6))}
        if rng.random() < 0.5:
            body["request_id"] = f"noise-{i}"
        messages.append((command_name(rng), json.dumps(body).encode()))
    rng.shuffle(messages)
    special = [
        ("infer", DEEP_JSON.encode()),  # past the JSON parser's recursion limit
        ("fit_ok", b'{"mm_per_px": ' + b"9" * 5000 + b"}"),  # past int-digit limit
        ("manifest", json.dumps({"role_id": "\ud800", "roi_id": "x"}).encode()),
        ("health", json.dumps({"request_id": "\ud800"}).encode()),
        ("infer", json.dumps({**ROI, "mm_per_px": 10**400, "image": "AAAA"}).encode()),
        ("dataset_list", json.dumps({**ROI, "request_id": "utf16"}).encode("utf-16")),
        ("health", b"\xef\xbb\xbf{}"),
        ("infer", json.dumps({**ROI, "mm_per_px": 0.2, "shape": "[" * 5000}).encode()),
    ]
    for offset, message in enumerate(special):  # early: damage shows on what follows
        messages.insert(10 + 7 * offset, message)
    return messages


def parsed_as_json(payload: bytes) -> bool:
    try:
        json.loads(payload)
    except (ValueError, RecursionError):
        return False
    return True


class Collector:
    """Every reply on the agent's result topics, kept raw; counted, not scanned."""

    def __init__(self, port: int) -> None:
        self.replies: list[tuple[str, bytes]] = []
        self.ready = threading.Event()
        self._lock = threading.Lock()
        self.client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2, client_id="noise-listener", protocol=mqtt.MQTTv5
        )
        self.client.on_connect = lambda c, *_: (c.subscribe(f"{PREFIX}/result/#", qos=1), None)
        self.client.on_subscribe = lambda *_: self.ready.set()
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        assert self.ready.wait(10), "the listener could not subscribe"

    def _on_message(self, client: Any, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        with self._lock:
            self.replies.append((msg.topic, msg.payload))

    def count(self) -> int:
        with self._lock:
            return len(self.replies)

    def find(self, request_id: str) -> dict[str, Any] | None:
        with self._lock:
            recent = self.replies[-50:]
        for _, payload in reversed(recent):
            if request_id.encode() in payload:
                return dict(json.loads(payload))
        return None

    def wait(self, n: int, quiet_s: float) -> None:
        """Until ``n`` replies came, or none came for ``quiet_s`` (the agent went silent)."""
        seen, last_change = self.count(), time.monotonic()
        while seen < n and time.monotonic() - last_change < quiet_s:
            time.sleep(0.1)
            if self.count() != seen:
                seen, last_change = self.count(), time.monotonic()

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def publisher(port: int) -> mqtt.Client:
    client = mqtt.Client(
        mqtt.CallbackAPIVersion.VERSION2, client_id="noise-maker", protocol=mqtt.MQTTv5
    )
    client.max_inflight_messages_set(100)
    client.max_queued_messages_set(0)  # unbounded: the whole burst is queued at once
    client.connect("127.0.0.1", port)
    client.loop_start()
    return client


def ask(client: mqtt.Client, collector: Collector, command: str, **body: Any) -> dict[str, Any]:
    """One request, and its reply (found by request id among everything collected);
    ``{"error": "no reply"}`` when none comes."""
    request_id = str(uuid.uuid4())
    client.publish(f"{PREFIX}/cmd/{command}", json.dumps({**body, "request_id": request_id}), 1)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        found = collector.find(request_id)
        if found is not None:
            return found
        time.sleep(0.05)
    return {"error": "no reply"}


def check_reply(topic: str, payload: bytes) -> str | None:
    """What every reply must be: the envelope of section 5, never ``internal``."""
    try:
        body = json.loads(payload)
    except ValueError:
        return f"reply on {topic} is not JSON"
    name = topic.removeprefix(f"{PREFIX}/result/")
    # A refused message is answered under its topic's name; a command that ran under its
    # own (send_ng runs as add_ng).
    names = {name, COMMANDS[name].name} if name in COMMANDS else {name}
    if not isinstance(body, dict) or body.get("command") not in names:
        return f"reply on {topic}: {payload[:100]!r}"
    if not isinstance(body.get("seq"), int) or not isinstance(body.get("ok"), bool):
        return f"reply on {topic} lacks seq/ok"
    if body["ok"]:
        return None
    error = body.get("error")
    if not isinstance(error, dict) or set(error) != {"code", "kind", "message"}:
        return f"error body {error!r:.100}"
    if error["kind"] == "internal" or STATUS_BY_KIND.get(error["kind"]) != error["code"]:
        return f"{error['kind']} on {topic}: {error['message']}"
    return None


@pytest.mark.reliability("bad_input", "10 000 MQTT messages of random bytes on random cmd topics")
def test_random_bytes_on_command_topics_never_hurt_the_agent(
    quick_broker: Broker,
    mqtt_agent: Callable[..., tuple[Agent, MqttAdapter]],
    ok_pngs: list[bytes],
    record_property,
) -> None:
    agent, adapter = mqtt_agent(quick_broker.port, agent_id=AGENT)
    fit = {**ROI, "mm_per_px": 0.2, "images": [b64(p) for p in ok_pngs[:3]]}
    assert agent.bus.execute(parse_command("fit_ok", fit, "test"), timeout=300).ok
    messages = noise(SEED)
    # Topics that are not command topics: nothing may answer them.
    strays = [f"{PREFIX}/cmd/", f"{PREFIX}/cmd/infer/extra", f"{PREFIX}/cmdx/infer"]
    collector = Collector(quick_broker.port)
    client = publisher(quick_broker.port)
    failures: list[str] = []
    replies: list[tuple[str, bytes]] = []
    missing = not_json = 0
    kinds: Counter[str] = Counter()
    try:
        sent = [
            client.publish(f"{PREFIX}/cmd/{name}", payload, qos=1) for name, payload in messages
        ]
        sent += [client.publish(topic, b"\x00\xff", qos=1) for topic in strays]
        for info in sent:
            info.wait_for_publish(timeout=60)
        collector.wait(len(messages), quiet_s=20)
        time.sleep(1.0)  # any reply beyond one per message would show by now
        replies = list(collector.replies)
        expected = Counter(f"{PREFIX}/result/{name}" for name, _ in messages)
        got = Counter(topic for topic, _ in replies)
        missing = sum((expected - got).values())
        extra = sum((got - expected).values())
        if missing:
            failures.append(f"{missing} messages got no reply")
        if extra:
            failures.append(f"{extra} replies more than messages: {list(got - expected)[:3]}")
        bad = [problem for topic, payload in replies if (problem := check_reply(topic, payload))]
        failures += bad[:20]
        not_json = sum(1 for _, payload in messages if not parsed_as_json(payload))
        refused_not_json = sum(
            1
            for _, payload in replies
            if NOT_JSON.encode() in payload and b'"request_id": null' in payload
        )
        if refused_not_json != not_json:
            failures.append(f"{not_json} non-JSON payloads, {refused_not_json} refused as such")
        kinds = Counter(
            json.loads(payload).get("error", {}).get("kind", "ok") for _, payload in replies
        )
        # Afterwards: still connected, and a normal inference gets its verdict.
        if agent.bus.mqtt_state != "connected" or not adapter.client.is_connected():
            failures.append(f"MQTT state {agent.bus.mqtt_state} after the noise")
        health = ask(client, collector, "health")
        if not health.get("ok") or health.get("mqtt") != "connected":
            failures.append(f"health afterwards: {health}")
        image = b64(ok_pngs[5])
        verdict = ask(client, collector, "infer", **ROI, mm_per_px=0.2, image=image)
        if not verdict.get("ok") or not isinstance(verdict.get("score"), float):
            failures.append(f"infer afterwards: {verdict.get('error')}")
    finally:
        client.disconnect()
        client.loop_stop()
        collector.close()
    record_property("tried", len(messages) + len(strays))
    record_property("failures", len(failures))
    record_property("lost", missing)
    record_property(
        "detail",
        f"{len(replies)} replies to {len(messages)} messages ({not_json} not JSON), QoS 1; "
        + ", ".join(f"{k} {v}" for k, v in kinds.most_common())
        + (f"; first failure: {failures[0][:200]}" if failures else ""),
    )
    assert not failures, failures[:10]
