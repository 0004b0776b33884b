"""MQTT adapter (contract section 5): commands in, replies, verdicts and state out.

paho-mqtt 2 with MQTT v5; callbacks only validate and enqueue, the engine runs on the
agent's worker. Replies produced while the broker is away go to a disk spool and are
published in order after reconnect.
"""

from __future__ import annotations

import json
import ssl
import sys
import threading
import time
from collections import OrderedDict
from typing import Any

import paho.mqtt.client as mqtt
import structlog
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from adapters.mqtt_topics import (
    Topics,
    VerdictTracker,
    envelope,
    error_envelope,
    fit_heatmap,
    utc_now,
)
from adapters.spool import Spool, SpooledMessage
from agent.bootstrap import Agent
from agent.config import Settings
from agent.errors import AgentError, bad_request
from agent.parsing import parse_command, request_id_of
from agent.replies import Reply
from engine.keys import RoiKey

log = structlog.get_logger("adapters.mqtt")

DUPLICATE_WINDOW = 20_000  # request ids remembered to drop redeliveries of reads
FLUSH_TIMEOUT_S = 10.0


class MqttAdapter:
    def __init__(self, settings: Settings, agent: Agent) -> None:
        self.settings = settings
        self.cfg = settings.mqtt
        self.agent = agent
        self.topics = Topics.of(
            self.cfg.topic_prefix, settings.agent_id, self.cfg.shared_group, self.cfg.pool
        )
        self.spool = Spool(settings.data_root / "spool" / "mqtt", self.cfg.spool_max_bytes)
        self.verdicts = VerdictTracker(self.cfg.alert_consecutive)
        self._seq = 0
        self._seq_lock = threading.Lock()
        # Publishing goes through one lock so the spool flush and new replies keep order.
        self._out_lock = threading.Lock()
        self._online = False
        # Read commands recently seen, with the reply sent for each (topic, payload, corr.).
        self._seen: OrderedDict[str, tuple[str, bytes, bytes | None] | None] = OrderedDict()
        self._seen_lock = threading.Lock()
        self._stop = threading.Event()
        self._stats_thread: threading.Thread | None = None
        self._last_failure: str | None = None  # the last connection failure logged
        self.client = self._make_client()

    # -- lifecycle ----------------------------------------------------------------

    def _make_client(self) -> mqtt.Client:
        client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2,
            client_id=f"bdi-agent-{self.settings.agent_id}",
            protocol=mqtt.MQTTv5,
        )
        client.will_set(self.topics.status, b"offline", qos=1, retain=True)
        if self.cfg.username:
            client.username_pw_set(self.cfg.username, self.cfg.password)
        tls = self.cfg.tls
        if tls.ca_file:
            client.tls_set(
                ca_certs=str(tls.ca_file),
                certfile=str(tls.cert_file) if tls.cert_file else None,
                keyfile=str(tls.key_file) if tls.key_file else None,
                cert_reqs=ssl.CERT_REQUIRED,
            )
            client.tls_insecure_set(tls.insecure)
        client.reconnect_delay_set(min_delay=1, max_delay=30)
        client.on_connect = self._on_connect
        client.on_connect_fail = self._on_connect_fail
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        return client

    def start(self) -> None:
        services = self.agent.services
        services.roi_listeners.append(self._publish_state)
        services.reply_listeners.append(self._publish_foreign)
        services.reply_observers.append(self._observe)
        self.agent.bus.mqtt_state = "disconnected"
        self.agent.bus.spool_size = self.spool.size
        properties = Properties(PacketTypes.CONNECT)
        properties.SessionExpiryInterval = self.cfg.session_expiry_s
        self.client.connect_async(
            self.cfg.host,
            self.cfg.port,
            keepalive=self.cfg.keepalive_s,
            clean_start=False,
            properties=properties,
        )
        self.client.loop_start()
        self._stats_thread = threading.Thread(
            target=self._stats_loop, name="mqtt-stats", daemon=True
        )
        self._stats_thread.start()
        log.info(
            "mqtt adapter started",
            host=self.cfg.host,
            port=self.cfg.port,
            prefix=self.topics.prefix,
        )

    def stop(self) -> None:
        self._stop.set()
        if self.client.is_connected():
            info = self.client.publish(self.topics.status, b"stopped", qos=1, retain=True)
            info.wait_for_publish(timeout=5)
        self.client.disconnect()
        self.client.loop_stop()
        self.agent.bus.mqtt_state = "disabled"

    # -- connection ---------------------------------------------------------------

    def _on_connect(
        self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, properties: Any
    ) -> None:
        if reason.is_failure:
            log.error(
                "mqtt connection refused",
                reason=str(reason),
                host=self.cfg.host,
                port=self.cfg.port,
                username=self.cfg.username,
            )
            return
        for topic in self.topics.subscriptions():
            client.subscribe(topic, qos=1)
        # Retained state first, then the spool in order, then "online": a consumer that
        # sees "online" sees a complete picture.
        threading.Thread(target=self._come_online, name="mqtt-online", daemon=True).start()

    def _on_connect_fail(self, client: mqtt.Client, userdata: Any) -> None:
        # paho calls this inside its ``except OSError``: the error is the refused socket or
        # the TLS handshake (a CA that did not sign the broker, another host name), which
        # would otherwise go unsaid. Logged when it changes, not at every retry.
        error = sys.exc_info()[1]
        reason = f"{type(error).__name__}: {error}" if error else "unknown"
        if reason != self._last_failure:
            self._last_failure = reason
            log.warning(
                "mqtt connection failed",
                reason=reason,
                host=self.cfg.host,
                port=self.cfg.port,
                tls=bool(self.cfg.tls.ca_file),
            )

    def _come_online(self) -> None:
        for key in self.agent.services.models.roi_keys():
            self._publish_state(key)
        # Replies made meanwhile still go to the spool, behind the older ones, until it
        # has been emptied under the lock: only then do new replies go straight out.
        while True:
            if self._stop.is_set() or not self.client.is_connected():
                return
            with self._out_lock:
                if self._flush_spool():
                    self._online = True
                    break
            time.sleep(0.5)
        self.client.publish(self.topics.status, b"online", qos=1, retain=True)
        self.agent.bus.mqtt_state = "connected"
        self.agent.bus.metrics.mqtt_connected.set(1)
        self._last_failure = None
        log.info("mqtt connected", host=self.cfg.host, port=self.cfg.port)

    def _on_disconnect(
        self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, properties: Any
    ) -> None:
        with self._out_lock:
            self._online = False
        self.agent.bus.mqtt_state = "disconnected"
        self.agent.bus.metrics.mqtt_connected.set(0)
        if not self._stop.is_set():
            log.warning("mqtt disconnected; replies go to the spool", reason=str(reason))

    def _flush_spool(self, batch: int = 100) -> bool:
        """Publish spooled messages in order, a batch at a time, each removed once the
        broker acknowledged it. True when the spool is empty."""
        now = time.time()
        pending = [m for m in self.spool.pending(batch) if not self._drop_expired(m, now)]
        sent = [(m, self._publish_spooled(m, now)) for m in pending]
        try:
            for message, info in sent:
                info.wait_for_publish(timeout=FLUSH_TIMEOUT_S)
                if not info.is_published():
                    break
                self.spool.remove(message)
        except (RuntimeError, ValueError):  # the connection dropped meanwhile
            pass
        self.agent.bus.spool_size = self.spool.size
        self.agent.bus.metrics.spool_bytes.set(self.spool.total_bytes)
        return self.spool.size == 0

    def _drop_expired(self, message: SpooledMessage, now: float) -> bool:
        if message.expired(now):
            self.spool.remove(message)
            return True
        return False

    def _publish_spooled(self, message: SpooledMessage, now: float) -> mqtt.MQTTMessageInfo:
        properties = Properties(PacketTypes.PUBLISH)
        if message.expiry_s is not None:
            remaining = max(1, int(message.expiry_s - (now - message.spooled_at)))
            properties.MessageExpiryInterval = remaining
        if message.response_correlation:
            properties.CorrelationData = bytes.fromhex(message.response_correlation)
        return self.client.publish(
            message.topic,
            message.payload,
            qos=message.qos,
            retain=message.retain,
            properties=properties,
        )

    # -- incoming -------------------------------------------------------------------

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        # An exception out of this callback would end paho's network thread: the adapter
        # would stay silent for good. Nothing a message holds may do that.
        try:
            self._handle(msg)
        except Exception:
            log.exception("message could not be handled", topic=msg.topic)

    def _handle(self, msg: mqtt.MQTTMessage) -> None:
        routed = self.topics.command_of(msg.topic)
        if routed is None:
            return
        name, via_pool = routed
        route = _Route(name, via_pool, msg.properties)
        try:
            payload = json.loads(msg.payload)
        except (ValueError, RecursionError):  # not JSON, not UTF-8, nested past the limit
            self._refuse(route, None, bad_request("payload is not valid JSON"))
            return
        request_id = request_id_of(payload)
        try:
            cmd = parse_command(
                name,
                payload,
                "mqtt",
                self.cfg.image_roots,
                route.deadline(),
                max_image_bytes=self.settings.max_image_bytes,
            )
        except AgentError as error:
            self._refuse(route, request_id, error)
            return
        except Exception as exc:  # a message must never kill the adapter
            log.exception("unexpected error parsing a message", topic=msg.topic)
            self._refuse(route, request_id, AgentError.from_exception(exc))
            return
        if not cmd.mutating and request_id is not None and self._repeated(name, request_id):
            return
        future = self.agent.bus.submit(cmd)
        future.add_done_callback(lambda done: self._reply(done.result(), route))

    def _repeated(self, name: str, request_id: str) -> bool:
        """A read command seen before (a QoS 1 redelivery, or a PLC retrying after its
        timeout) is not run again: its first reply is sent again, or, while that is
        still being made, the repeat is dropped."""
        key = f"{name}:{request_id}"
        with self._seen_lock:
            if key not in self._seen:
                self._seen[key] = None
                while len(self._seen) > DUPLICATE_WINDOW:
                    self._seen.popitem(last=False)
                return False
            first = self._seen[key]
        log.info(
            "repeated request", command=name, request_id=request_id, answered=first is not None
        )
        if first is not None:
            topic, payload, correlation = first
            self._send_raw(topic, payload, correlation)
        return True

    def _remember(self, name: str, request_id: str, sent: tuple[str, bytes, bytes | None]) -> None:
        key = f"{name}:{request_id}"
        with self._seen_lock:
            if key in self._seen:
                self._seen[key] = sent

    def _refuse(self, route: _Route, request_id: str | None, error: AgentError) -> None:
        body = error_envelope(route.command, request_id, self._next_seq(), error.body())
        log.warning(
            "message refused",
            command=route.command,
            request_id=request_id,
            kind=error.kind,
            error=error.message,
        )
        self._send(route.reply_topic(self.topics), body, route.correlation)

    # -- outgoing -------------------------------------------------------------------

    def _next_seq(self) -> int:
        with self._seq_lock:
            self._seq += 1
            return self._seq

    def _reply(self, reply: Reply, route: _Route) -> None:
        body = envelope(reply, self._next_seq())
        fit_heatmap(body, self.cfg.heatmap_max_bytes)
        topic = route.reply_topic(self.topics)
        payload = self._send(topic, body, route.correlation)
        if not reply.command.mutating:
            self._remember(
                route.command, reply.command.request_id, (topic, payload, route.correlation)
            )

    def _publish_foreign(self, reply: Reply, extra: dict[str, Any]) -> None:
        """Replies of folder infers and dataset refits, on this agent's result topic."""
        body = envelope(reply, self._next_seq(), extra)
        body.pop("heatmap_png_base64", None)  # the folder has the heatmap file
        self._send(self.topics.result(reply.command.name), body, None)

    def _send(
        self,
        topic: str,
        body: dict[str, Any],
        correlation: bytes | None,
        qos: int = 1,
        retain: bool = False,
        expiry: bool = True,
    ) -> bytes:
        payload = json.dumps(body).encode()
        self._send_raw(topic, payload, correlation, qos, retain, expiry)
        return payload

    def _send_raw(
        self,
        topic: str,
        payload: bytes,
        correlation: bytes | None,
        qos: int = 1,
        retain: bool = False,
        expiry: bool = True,
    ) -> None:
        expiry_s = self.cfg.result_expiry_s if expiry else None
        with self._out_lock:
            if not self._online:
                self.spool.append(topic, payload, qos, retain, expiry_s, correlation)
                self.agent.bus.spool_size = self.spool.size
                self.agent.bus.metrics.spool_bytes.set(self.spool.total_bytes)
                return
            properties = None
            if expiry_s is not None or correlation is not None:
                properties = Properties(PacketTypes.PUBLISH)
                if expiry_s is not None:
                    properties.MessageExpiryInterval = expiry_s
                if correlation is not None:
                    properties.CorrelationData = correlation
            self.client.publish(topic, payload, qos=qos, retain=retain, properties=properties)

    def _publish_state(self, key: RoiKey) -> None:
        try:
            state = self.agent.services.roi_state(key)
        except Exception:
            log.exception("ROI state unreadable", role_id=key.role_id, roi_id=key.roi_id)
            return
        topic = self.topics.roi(key.role_id, key.roi_id, "state")
        self._send(topic, {**state, "recipe_id": key.recipe_id}, None, retain=True, expiry=False)

    def _observe(self, reply: Reply) -> None:
        """Every infer verdict, whatever its source: the ``last`` and ``alert`` topics."""
        if not reply.ok or reply.command.name not in ("infer", "infer_batch"):
            return
        body = reply.body or {}
        items = body.get("results", []) if reply.command.name == "infer_batch" else [body]
        for item in items:
            if "score" not in item:
                continue
            self._publish_verdict(reply, item)

    def _publish_verdict(self, reply: Reply, item: dict[str, Any]) -> None:
        role, roi = item["role_id"], item["roi_id"]
        ts = utc_now()
        request_id = item.get("request_id", reply.command.request_id)
        last = {
            "score": item["score"],
            "threshold": item.get("threshold"),
            "is_anomaly": item.get("is_anomaly"),
            "n_regions": len(item.get("regions", [])),
            "ts": ts,
            "seq": self._next_seq(),
            "request_id": request_id,
        }
        self._send(self.topics.roi(role, roi, "last"), last, None, retain=True, expiry=False)
        alert = self.verdicts.update(
            (reply.command.recipe_id, role, roi), item.get("is_anomaly"), request_id, ts
        )
        if alert is not None:
            self._send(self.topics.roi(role, roi, "alert"), alert, None)

    def _stats_loop(self) -> None:
        while not self._stop.wait(self.cfg.stats_interval_s):
            if self.client.is_connected():
                payload = json.dumps(self.agent.bus.stats_body()).encode()
                self.client.publish(self.topics.stats, payload, qos=0, retain=True)


class _Route:
    """Where the reply to one request goes: v5 ResponseTopic/CorrelationData, else the
    result topic (the pool's when the request came through the pool)."""

    def __init__(self, command: str, via_pool: bool, properties: Any) -> None:
        self.command = command
        self.via_pool = via_pool
        self.response_topic: str | None = getattr(properties, "ResponseTopic", None)
        self.correlation: bytes | None = getattr(properties, "CorrelationData", None)
        self.expiry_s: int | None = getattr(properties, "MessageExpiryInterval", None)
        self.received = time.monotonic()

    def reply_topic(self, topics: Topics) -> str:
        return self.response_topic or topics.result(self.command, self.via_pool)

    def deadline(self) -> float | None:
        # A request that expires at the broker is not worth answering after that either.
        return self.received + self.expiry_s if self.expiry_s else None


def create(settings: Settings, agent: Agent) -> MqttAdapter:
    return MqttAdapter(settings, agent)
