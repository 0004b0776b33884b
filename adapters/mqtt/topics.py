"""MQTT topic names, the reply envelope and the per-ROI verdict topics' payloads."""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from typing import Any

from agent.replies import Reply
from agent.results import HEATMAP_FIELD, InferBatchResult, InferResult, Result
from engine.keys import is_topic_text
from engine.memory import utc_now_iso
from engine.preprocess import cv2_module

MAX_TOPIC_BYTES = 65_535  # the MQTT length prefix of a topic name is two bytes


@dataclass(frozen=True)
class Topics:
    prefix: str  # "bdi/<agent_id>"
    pool: str | None  # "bdi/<pool>" when infers are shared in a group
    shared_group: str | None

    @classmethod
    def of(
        cls, topic_prefix: str, agent_id: str, shared_group: str | None, pool: str | None
    ) -> Topics:
        base = topic_prefix.rstrip("/")
        pool_prefix = f"{base}/{pool or shared_group}" if shared_group else None
        return cls(f"{base}/{agent_id}", pool_prefix, shared_group)

    @property
    def status(self) -> str:
        return f"{self.prefix}/status"

    @property
    def health(self) -> str:
        return f"{self.prefix}/health"

    @property
    def stats(self) -> str:
        return f"{self.prefix}/stats"

    def result(self, command: str, via_pool: bool = False) -> str:
        base = self.pool if via_pool and self.pool else self.prefix
        return f"{base}/result/{command}"

    def roi(self, role_id: str, roi_id: str, leaf: str) -> str:
        # Topic levels cannot hold '/', '+' or '#': ids carrying them are URL-escaped.
        return f"{self.prefix}/roi/{_level(role_id)}/{_level(roi_id)}/{leaf}"

    def subscriptions(self) -> list[str]:
        own = [f"{self.prefix}/cmd/+"]
        if self.pool and self.shared_group:
            own += [f"$share/{self.shared_group}/{self.pool}/cmd/{c}" for c in SHARED_COMMANDS]
        return own

    def command_of(self, topic: str) -> tuple[str, bool] | None:
        """(command name, arrived via the pool) for a command topic, else None."""
        for base, via_pool in ((self.prefix, False), (self.pool, True)):
            if base and topic.startswith(f"{base}/cmd/"):
                name = topic[len(base) + 5 :]
                return (name, via_pool) if name and "/" not in name else None
        return None


SHARED_COMMANDS = ("infer", "infer_batch")


def publish_topic_problem(topic: str) -> str | None:
    """Why ``topic`` cannot be published to, or None. paho raises on wildcards and empty
    topics; mosquitto disconnects a client whose topic holds control characters or
    non-characters; ``$`` topics belong to the broker, which drops what is sent there."""
    if not topic:
        return "it is empty"
    if "+" in topic or "#" in topic:
        return "it holds a wildcard (+ or #)"
    if topic.startswith("$"):
        return "topics starting with '$' belong to the broker"
    if not is_topic_text(topic):
        return "it holds a control character, a non-character or a lone surrogate"
    if len(topic.encode("utf-8")) > MAX_TOPIC_BYTES:
        return f"it is longer than {MAX_TOPIC_BYTES} bytes"
    return None


def _level(value: str) -> str:
    return value.replace("%", "%25").replace("/", "%2F").replace("+", "%2B").replace("#", "%23")


def envelope(reply: Reply, seq: int, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    cmd = reply.command
    head: dict[str, Any] = {
        "ok": reply.ok,
        "command": cmd.name,
        "request_id": cmd.request_id,
        "recipe_id": cmd.recipe_id,
        "seq": seq,
        "ts": utc_now_iso(),
        "source": cmd.source,
    }
    head.update(extra or {})
    if reply.error is not None:
        return {**head, "error": reply.error.body()}
    # Typed results share no field name with the envelope: merged as they are.
    return {**head, **(reply.result.fields() if reply.result is not None else {})}


def error_envelope(
    command: str,
    request_id: str | None,
    seq: int,
    kind_code_message: dict[str, Any],
    recipe_id: str = "default",
) -> dict[str, Any]:
    """For a message that never became a command (not JSON, bad fields...); ``recipe_id``
    is the payload's, normalised, when one could be read (``agent.parsing.recipe_id_of``)."""
    return {
        "ok": False,
        "command": command,
        "request_id": request_id,
        "recipe_id": recipe_id,
        "seq": seq,
        "ts": utc_now_iso(),
        "source": "mqtt",
        "error": kind_code_message,
    }


def json_payload(body: dict[str, Any]) -> bytes:
    """The body as strict JSON. A non-finite number (``Infinity`` is no JSON: a PLC's
    parser refuses the whole reply) turns the reply into an ``internal`` error that says
    so, with the same envelope."""
    try:
        return json.dumps(body, allow_nan=False).encode()
    except ValueError:
        head = {k: body.get(k) for k in ENVELOPE_FIELDS if k in body}
        error = {
            "code": 500,
            "kind": "internal",
            "message": "the result holds a number JSON cannot carry (infinity or NaN)",
        }
        return json.dumps({**head, "ok": False, "error": error}).encode()


ENVELOPE_FIELDS = ("ok", "command", "request_id", "recipe_id", "seq", "ts", "source")


def add_heatmaps(body: dict[str, Any], result: Result | None, max_bytes: int) -> None:
    """The heatmaps of a reply (an infer's, or each infer_batch item's) as base64, each
    PNG downscaled until it fits ``max_bytes``."""
    if isinstance(result, InferResult):
        _add_heatmap(body, result.heatmap_png, max_bytes)
    elif isinstance(result, InferBatchResult):
        for item, out in zip(result.items, body.get("results", []), strict=True):
            if item.result is not None:
                _add_heatmap(out, item.result.heatmap_png, max_bytes)


def _add_heatmap(body: dict[str, Any], png: bytes | None, max_bytes: int) -> None:
    if png is None:
        return
    if len(png) > max_bytes:
        png, scale = downscale_png(png, max_bytes)
        # The PLC needs to know the heatmap no longer has the input image's size.
        body["heatmap_scale"] = scale
    body[HEATMAP_FIELD] = base64.b64encode(png).decode("ascii")


def downscale_png(png: bytes, max_bytes: int) -> tuple[bytes, float]:
    """The PNG shrunk by 0.7 per step until it fits ``max_bytes`` (or is 8 px), and the
    scale applied to its width."""
    cv2 = cv2_module()
    import numpy as np

    image = cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_UNCHANGED)
    original_width = image.shape[1]
    while len(png) > max_bytes and min(image.shape[:2]) > 8:
        height, width = image.shape[:2]
        image = cv2.resize(
            image, (max(1, width * 7 // 10), max(1, height * 7 // 10)), interpolation=cv2.INTER_AREA
        )
        _, buffer = cv2.imencode(".png", image, [cv2.IMWRITE_PNG_COMPRESSION, 9])
        png = buffer.tobytes()
    return png, round(image.shape[1] / original_width, 4)
