"""MQTT topic names, the reply envelope and the per-ROI verdict topics' payloads."""

from __future__ import annotations

import base64
import json
import threading
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from agent.replies import Reply
from engine.keys import is_topic_text
from engine.preprocess import cv2_module

MAX_TOPIC_BYTES = 65_535  # the MQTT length prefix of a topic name is two bytes


def utc_now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


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
        "ts": utc_now(),
        "source": cmd.source,
    }
    head.update(extra or {})
    if reply.error is not None:
        return {**head, "error": reply.error.body()}
    # The envelope's own fields always win: a result field of the same name (the "ok"
    # label listing of dataset_list) would otherwise turn "ok" into an object. It rides
    # along as "result_<name>".
    body = {
        (f"result_{name}" if name in head else name): value
        for name, value in (reply.body or {}).items()
    }
    return {**head, **body}


def error_envelope(
    command: str, request_id: str | None, seq: int, kind_code_message: dict[str, Any]
) -> dict[str, Any]:
    """For a message that never became a command (not JSON, bad fields...)."""
    return {
        "ok": False,
        "command": command,
        "request_id": request_id,
        "recipe_id": "default",
        "seq": seq,
        "ts": utc_now(),
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


def fit_heatmaps(body: dict[str, Any], max_bytes: int) -> None:
    """Every heatmap of a reply within ``max_bytes``: an infer's, or each infer_batch item's."""
    fit_heatmap(body, max_bytes)
    results = body.get("results")
    if body.get("command") == "infer_batch" and isinstance(results, list):
        for item in results:
            if isinstance(item, dict):
                fit_heatmap(item, max_bytes)


def fit_heatmap(body: dict[str, Any], max_bytes: int) -> None:
    """Downscale ``heatmap_png_base64`` in place until its PNG fits ``max_bytes``."""
    encoded = body.get("heatmap_png_base64")
    if not isinstance(encoded, str):
        return
    png = base64.b64decode(encoded)
    if len(png) <= max_bytes:
        return
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
    body["heatmap_png_base64"] = base64.b64encode(png).decode("ascii")
    # The PLC needs to know the heatmap no longer has the input image's size.
    body["heatmap_scale"] = round(image.shape[1] / original_width, 4)


class VerdictTracker:
    """Consecutive anomalies per ROI: one alert per run, and ``cleared`` when it ends."""

    def __init__(self, alert_after: int) -> None:
        self.alert_after = alert_after
        self._runs: dict[tuple[str, str, str], dict[str, Any]] = {}
        self._lock = threading.Lock()

    def update(
        self, roi: tuple[str, str, str], is_anomaly: bool | None, request_id: str, ts: str
    ) -> dict[str, Any] | None:
        """The alert payload to publish now, if any."""
        if is_anomaly is None:
            return None
        with self._lock:
            run = self._runs.get(roi)
            if is_anomaly:
                if run is None:
                    run = self._runs[roi] = {"count": 0, "since": ts, "alerted": False}
                run["count"] += 1
                if run["count"] >= self.alert_after and not run["alerted"]:
                    run["alerted"] = True
                    return {
                        "kind": "consecutive_anomalies",
                        "count": run["count"],
                        "since": run["since"],
                        "last_request_id": request_id,
                    }
                return None
            self._runs.pop(roi, None)
            if run is not None and run["alerted"]:
                return {"kind": "cleared", "count": run["count"], "last_request_id": request_id}
            return None
