"""MQTT adapter (contract section 5): commands in, replies, verdicts and state out.

paho-mqtt 2 with MQTT v5, or 3.1.1 for this run once the broker shows it speaks only that
(``_fall_back``); callbacks only validate and enqueue, the engine runs on the
agent's worker, and everything outgoing is published by the outbox's own thread
(``adapters.mqtt.outbox``): replies produced while the broker is away go to a disk spool
and are published in order after reconnect.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from collections.abc import Mapping
from typing import Any

import paho.mqtt.client as mqtt
import structlog
from paho.mqtt.enums import MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from adapters.mqtt.broker_probe import accepts_v5, secure
from adapters.mqtt.outbox import Outbox
from adapters.mqtt.repeats import RecentReplies, Sent, repeat_key
from adapters.mqtt.spool import Spool, spool_folder
from adapters.mqtt.topics import (
    Topics,
    add_heatmaps,
    envelope,
    error_envelope,
    json_payload,
    publish_topic_problem,
)
from agent.bootstrap import Agent
from agent.config import Settings
from agent.errors import AgentError, bad_request
from agent.events import Event, agent_status
from agent.parsing import parse_command, recipe_id_of, request_id_of
from agent.replies import Reply
from agent.request_digest import request_digest
from engine.keys import RoiKey

log = structlog.get_logger("adapters.mqtt")

# What paho reports when a 3.1.1 broker answers a v5 CONNECT ("unacceptable protocol
# version", return code 1 in 3.1.1).
V5_REFUSED = ReasonCode(PacketTypes.CONNACK, "Unsupported protocol version")
# Some 3.1.1 brokers never answer a v5 CONNECT: they close the connection, or misread it and
# wait until paho's keepalive gives up. Once is not proof (a broker restarting does it too),
# and a broker that once answered MQTT 5 in this run is never suspected again.
UNANSWERED_V5_BEFORE_FALLBACK = 2


class MqttAdapter:
    def __init__(self, settings: Settings, agent: Agent) -> None:
        self.settings = settings
        self.cfg = settings.mqtt
        self.agent = agent
        self.topics = Topics.of(
            self.cfg.topic_prefix, settings.agent_id, self.cfg.shared_group, self.cfg.pool
        )
        self.spool = Spool(
            spool_folder(settings.data_root, settings.agent_id),
            self.cfg.spool_max_bytes,
            legacy=settings.data_root / "spool" / "mqtt",
        )
        self._seq = 0
        self._seq_lock = threading.Lock()
        # Successful replies to recent reads, so a repeat is answered and not run again.
        self.repeats = RecentReplies(self.cfg.repeat_cache_bytes)
        self._stop = threading.Event()
        self._stats_thread: threading.Thread | None = None
        self._last_failure: str | None = None  # the last connection failure logged
        # MQTT 5 until the broker shows it speaks only 3.1.1, then 3.1.1 for this run.
        self.protocol: MQTTProtocolVersion = mqtt.MQTTv5
        self._connack_seen = False  # on the current connection attempt
        self._unanswered_v5 = 0  # v5 CONNECTs in a row closed without a CONNACK
        self._v5_answered = False  # the broker answered a v5 CONNECT in this run
        self._v311_on_trial = False  # tried after unanswered v5 CONNECTs, not yet answered
        self._v311_said = False  # the fallback is logged once
        self.client = self._make_client()
        self.outbox = Outbox(self.client, self.spool, agent.bus, self.cfg.result_expiry_s)

    # -- lifecycle ----------------------------------------------------------------

    @property
    def protocol_name(self) -> str:
        return "5" if self.protocol == mqtt.MQTTv5 else "3.1.1"

    def _make_client(self) -> mqtt.Client:
        client_id = f"bdi-agent-{self.settings.agent_id}"
        if self.protocol == mqtt.MQTTv5:
            client = mqtt.Client(
                mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5
            )
        else:
            # 3.1.1 has no session expiry: a persistent session is what keeps the commands
            # sent while the agent reconnects.
            client = mqtt.Client(
                mqtt.CallbackAPIVersion.VERSION2,
                client_id=client_id,
                protocol=mqtt.MQTTv311,
                clean_session=False,
            )
        client.will_set(self.topics.status, b"offline", qos=1, retain=True)
        secure(client, self.cfg)
        client.reconnect_delay_set(min_delay=1, max_delay=30)
        client.on_connect = self._on_connect
        client.on_connect_fail = self._on_connect_fail
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        return client

    def start(self) -> None:
        services = self.agent.services
        services.reply_listeners.append(self._publish_foreign)
        self._unsubscribe = self.agent.bus.events.subscribe(self._on_event)
        self.agent.bus.mqtt_state = "disconnected"
        self.agent.bus.spool_size = self.spool.size
        self.outbox.start()
        self._connect()
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

    def _connect(self) -> None:
        """Connect in the background (paho retries) with the protocol in use."""
        if self.protocol == mqtt.MQTTv5:
            properties = Properties(PacketTypes.CONNECT)
            properties.SessionExpiryInterval = self.cfg.session_expiry_s
            self.client.connect_async(
                self.cfg.host,
                self.cfg.port,
                keepalive=self.cfg.keepalive_s,
                clean_start=False,
                properties=properties,
            )
        else:  # clean_session=False is set on the 3.1.1 client
            self.client.connect_async(self.cfg.host, self.cfg.port, keepalive=self.cfg.keepalive_s)
        self.client.loop_start()

    def stop(self) -> None:
        self._stop.set()
        self._unsubscribe()
        self.outbox.stop(last=self._say_stopped)
        self.client.disconnect()
        self.client.loop_stop()
        self.agent.bus.mqtt_state = "disabled"

    def _say_stopped(self) -> None:
        if self.client.is_connected():
            info = self.client.publish(self.topics.status, b"stopped", qos=1, retain=True)
            info.wait_for_publish(timeout=5)

    # -- connection (paho's thread: post to the outbox or set a flag, never publish) -------

    def _on_connect(
        self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, properties: Any
    ) -> None:
        if client is not self.client:
            return  # a client being replaced
        self._connack_seen = True
        if self.protocol == mqtt.MQTTv5:
            if reason == V5_REFUSED:
                self._fall_back(client, f"the broker refused MQTT 5 ({reason})")
                return
            self._unanswered_v5 = 0
            self._v5_answered = True
        on_trial, self._v311_on_trial = self._v311_on_trial, False
        if reason.is_failure:
            log.error(
                "mqtt connection refused",
                reason=str(reason),
                host=self.cfg.host,
                port=self.cfg.port,
                username=self.cfg.username,
            )
            return
        if on_trial:  # the probe takes a moment: not on paho's thread
            threading.Thread(
                target=self._confirm_v311, args=(client,), name="mqtt-v5-probe", daemon=True
            ).start()
            return
        if self.protocol == mqtt.MQTTv311:
            self._say_v311()
        self._serve(client)

    def _serve(self, client: mqtt.Client) -> None:
        for topic in self.topics.subscriptions():
            client.subscribe(topic, qos=1)
        # Retained states and health first, then the spool in order, then the status
        # ("online" once inspections can be served): a consumer that sees "online" sees a
        # complete picture.
        self.outbox.came_online(self._republish_states, self._announce_online)

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

    def _on_disconnect(
        self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, properties: Any
    ) -> None:
        # paho holds its own locks here: nothing that could wait on a publish.
        self.outbox.went_offline()
        self.agent.bus.mqtt_state = "disconnected"
        self.agent.bus.metrics.mqtt_connected.set(0)
        if not self._stop.is_set():
            log.warning("mqtt disconnected; replies go to the spool", reason=str(reason))
        if client is not self.client or self._stop.is_set():
            return
        answered, self._connack_seen = self._connack_seen, False
        if answered:
            return
        # The broker closed the connection, or let the keepalive run out, without a CONNACK.
        if self.protocol == mqtt.MQTTv5 and not self._v5_answered:
            self._unanswered_v5 += 1
            if self._unanswered_v5 >= UNANSWERED_V5_BEFORE_FALLBACK:
                why = f"{self._unanswered_v5} MQTT 5 CONNECTs in a row got no answer ({reason})"
                self._v311_on_trial = True
                self._fall_back(client, why)
        elif self._v311_on_trial:
            # Not a protocol matter: the broker answers nothing. Back to MQTT 5.
            log.warning("mqtt broker did not answer MQTT 3.1.1 either; back to MQTT 5")
            self._switch(client, mqtt.MQTTv5)

    def _confirm_v311(self, client: mqtt.Client) -> None:
        """3.1.1 was accepted after unanswered v5 CONNECTs: stay on it (and serve) only if
        the broker, up now, does not take MQTT 5 either (it was maybe frozen, or down behind
        a proxy)."""
        probe_id = f"bdi-agent-{self.settings.agent_id}-v5-probe"
        v5 = accepts_v5(self.cfg, probe_id, min(self.cfg.keepalive_s, 10))
        if client is not self.client or self._stop.is_set():
            return  # the connection it was about is gone
        if not v5:
            self._say_v311()
            if client.is_connected():
                self._serve(client)
            return
        log.warning("mqtt broker accepts MQTT 5 after all; reconnecting with MQTT 5")
        self._switch(client, mqtt.MQTTv5)

    def _say_v311(self) -> None:
        if not self._v311_said:
            self._v311_said = True
            log.warning(
                "mqtt broker speaks 3.1.1 only; connected with MQTT 3.1.1 "
                "(no ResponseTopic, no message expiry)",
                host=self.cfg.host,
                port=self.cfg.port,
            )

    def _fall_back(self, client: mqtt.Client, why: str) -> None:
        log.warning("mqtt broker does not take MQTT 5; trying MQTT 3.1.1", why=why)
        self._switch(client, mqtt.MQTTv311)

    def _switch(self, client: mqtt.Client, protocol: MQTTProtocolVersion) -> None:
        """End this client's reconnect loop (from paho's thread or the probe's), then
        replace the client on the outbox thread (which publishes, so never to a client half
        replaced)."""
        client.disconnect()
        self.outbox.post(lambda: self._replace_client(client, protocol))

    def _replace_client(self, old: mqtt.Client, protocol: MQTTProtocolVersion) -> None:
        if self._stop.is_set() or old is not self.client:
            return
        old.loop_stop()  # its thread ends after the callback that asked for this
        self.protocol = protocol
        self._connack_seen = False
        self._unanswered_v5 = 0
        self.client = self._make_client()
        self.outbox.use_client(self.client, v5=protocol == mqtt.MQTTv5)
        self._connect()

    def _republish_states(self) -> None:
        for key in self.agent.services.models.roi_keys():
            self._send_state(key)

    def _announce_online(self) -> None:
        self.agent.bus.mqtt_state = "connected"
        self._send_health(self.agent.bus.health())
        self.agent.bus.metrics.mqtt_connected.set(1)
        self._last_failure = None
        log.info(
            "mqtt connected", host=self.cfg.host, port=self.cfg.port, protocol=self.protocol_name
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
        recipe_id = recipe_id_of(payload)
        if route.response_problem is not None:
            # Answered on the result topic instead: a reply to a topic no broker takes
            # would be lost, and once spooled it would hold up every reply behind it.
            message = (
                f"ResponseTopic {ascii(route.response_topic)[:200]} is not a valid publish "
                f"topic: {route.response_problem}"
            )
            self._refuse(route, request_id, bad_request(message), recipe_id)
            return
        try:
            cmd = parse_command(
                name,
                payload,
                "mqtt",
                self.cfg.image_roots,
                route.deadline(),
                max_image_bytes=self.settings.max_image_bytes,
                defaults=self.agent.services.defaults_for,
            )
        except AgentError as error:
            self._refuse(route, request_id, error, recipe_id)
            return
        except Exception as exc:  # a message must never kill the adapter
            log.exception("unexpected error parsing a message", topic=msg.topic)
            self._refuse(route, request_id, AgentError.from_exception(exc), recipe_id)
            return
        key = None
        if not cmd.mutating and request_id is not None:
            key = repeat_key(cmd.name, request_id, request_digest(cmd))
            if self._repeated(key, cmd.name, request_id, route):
                return
        future = self.agent.bus.submit(cmd)
        future.add_done_callback(lambda done: self._reply(done.result(), route, key))

    def _repeated(self, key: str, name: str, request_id: str, route: _Route) -> bool:
        """A read seen before with the same inputs (a QoS 1 redelivery, or a PLC retrying
        after its timeout) is not run again: its first reply is sent again, or, while that
        is still being made, the repeat is dropped. Mutating commands are recognised by the
        worker's journal instead."""
        new, first = self.repeats.claim(key)
        if new:
            return False
        log.info(
            "repeated request", command=name, request_id=request_id, answered=first is not None
        )
        if first is not None:
            self.outbox.post(lambda: self._send_again(first, route))
        return True

    def _send_again(self, sent: Sent, route: _Route) -> None:
        """The first reply, to where this repeat asked (a v5 client retrying with new
        CorrelationData matches it by that)."""
        self.outbox.publish(route.reply_topic(self.topics), sent.payload, route.correlation)

    def _refuse(
        self,
        route: _Route,
        request_id: str | None,
        error: AgentError,
        recipe_id: str = "default",
    ) -> None:
        log.warning(
            "message refused",
            command=route.command,
            request_id=request_id,
            recipe_id=recipe_id,
            kind=error.kind,
            error=error.message,
        )

        def send() -> None:
            body = error_envelope(
                route.command, request_id, self._next_seq(), error.body(), recipe_id
            )
            topic = route.reply_topic(self.topics)
            self.outbox.publish(topic, json_payload(body), route.correlation)

        self.outbox.post(send)

    # -- outgoing (each posted to the outbox, whatever thread produced it) ----------------

    def _next_seq(self) -> int:
        with self._seq_lock:
            self._seq += 1
            return self._seq

    def _reply(self, reply: Reply, route: _Route, key: str | None) -> None:
        self.outbox.post(lambda: self._send_reply(reply, route, key))

    def _send_reply(self, reply: Reply, route: _Route, key: str | None) -> None:
        body = envelope(reply, self._next_seq())
        add_heatmaps(body, reply.result, self.cfg.heatmap_max_bytes)
        topic = route.reply_topic(self.topics)
        payload = json_payload(body)
        published = self.outbox.publish(topic, payload, route.correlation)
        if key is None:
            return
        # Only a success is the answer to a repeat: busy, or any error, runs again.
        if published and reply.ok:
            self.repeats.answered(key, Sent(topic, payload, route.correlation))
        else:
            self.repeats.forget(key)

    def _publish_foreign(self, reply: Reply, extra: dict[str, Any]) -> None:
        """Replies of folder infers and dataset refits, on this agent's result topic."""

        def send() -> None:
            body = envelope(reply, self._next_seq(), extra)
            self.outbox.publish(self.topics.result(reply.command.name), json_payload(body))

        self.outbox.post(send)

    def _on_event(self, event: Event) -> None:
        """The core's events (on the delivery thread), mapped to this adapter's topics."""
        self.outbox.post(lambda: self._send_event(event))

    def _send_event(self, event: Event) -> None:
        body = event.body
        if event.name == "health":
            # Not spooled: a status from while the broker was away is stale by the time it
            # could be read, and every reconnect publishes the current one.
            if self.outbox.online:
                self._send_health(body)
            return
        topic = self.topics.roi(body["role_id"], body["roi_id"], TOPIC_OF_EVENT[event.name])
        retained = event.name != "alert"
        self.outbox.publish(topic, event.data.encode(), retain=retained, expiry=not retained)

    def _send_health(self, health: Mapping[str, Any]) -> None:
        """The retained ``health`` body, then the status it means."""
        self.outbox.publish(
            self.topics.health, json_payload(dict(health)), retain=True, expiry=False
        )
        status = agent_status(health).encode()
        self.outbox.publish(self.topics.status, status, retain=True, expiry=False)

    def _send_state(self, key: RoiKey) -> None:
        try:
            state = self.agent.services.roi_state_body(key)
        except Exception:
            log.exception("ROI state unreadable", role_id=key.role_id, roi_id=key.roi_id)
            return
        topic = self.topics.roi(key.role_id, key.roi_id, "state")
        self.outbox.publish(topic, json_payload(state), retain=True, expiry=False)

    def _stats_loop(self) -> None:
        while not self._stop.wait(self.cfg.stats_interval_s):
            if self.client.is_connected():
                payload = json.dumps(self.agent.bus.stats_body()).encode()
                self.client.publish(self.topics.stats, payload, qos=0, retain=True)


# The ROI topic leaf each ROI event goes to (contract section 5).
TOPIC_OF_EVENT = {"verdict": "last", "alert": "alert", "state": "state"}


class _Route:
    """Where the reply to one request goes: v5 ResponseTopic/CorrelationData, else the
    result topic (the pool's when the request came through the pool). A ResponseTopic
    that cannot be published to is not used: the refusal goes to the result topic."""

    def __init__(self, command: str, via_pool: bool, properties: Any) -> None:
        self.command = command
        self.via_pool = via_pool
        self.response_topic: str | None = getattr(properties, "ResponseTopic", None)
        self.correlation: bytes | None = getattr(properties, "CorrelationData", None)
        self.expiry_s: int | None = getattr(properties, "MessageExpiryInterval", None)
        self.received = time.monotonic()
        # An empty ResponseTopic is read as none, as before.
        self.response_problem = (
            publish_topic_problem(self.response_topic) if self.response_topic else None
        )

    def reply_topic(self, topics: Topics) -> str:
        if self.response_topic and self.response_problem is None:
            return self.response_topic
        return topics.result(self.command, self.via_pool)

    def deadline(self) -> float | None:
        # A request that expires at the broker is not worth answering after that either.
        return self.received + self.expiry_s if self.expiry_s else None


def create(settings: Settings, agent: Agent) -> MqttAdapter:
    return MqttAdapter(settings, agent)
