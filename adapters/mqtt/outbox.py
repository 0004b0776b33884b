"""The one thread that publishes: replies, events, the spool's flush and the status.

Nothing else calls ``client.publish`` (but the stats loop's QoS 0 heartbeat), and no lock
of ours is ever held around it. paho calls ``on_disconnect`` while holding its own
``_out_message_mutex``, which ``publish`` takes too: a callback that waited for a lock held
by a thread inside ``publish`` deadlocked the agent for good (SIGTERM never completed).
So paho's callbacks only post tasks here or flip a flag.

While the broker is away (``online`` false) messages go to the disk spool. On connect, the
retained ROI states are spooled behind the older messages, the spool is flushed in order,
and only then do messages go straight out: a consumer that sees ``online`` sees a complete
picture. A spooled message that can never be published is moved aside, never retried.

On an MQTT 3.1.1 connection (a broker that refuses MQTT 5) messages go out without v5
properties: no message expiry, no CorrelationData.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable

import paho.mqtt.client as mqtt
import structlog
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from adapters.mqtt.spool import Spool, SpooledMessage
from adapters.mqtt.topics import publish_topic_problem
from agent.bus import Bus

log = structlog.get_logger("adapters.mqtt")

FLUSH_TIMEOUT_S = 10.0  # for the broker to acknowledge a batch of spooled messages
FLUSH_RETRY_S = 0.5
STOP_TIMEOUT_S = 10.0

Task = Callable[[], None]


class Outbox:
    def __init__(self, client: mqtt.Client, spool: Spool, bus: Bus, result_expiry_s: int) -> None:
        self.client = client
        self.v5 = True  # the client speaks MQTT 5: publish with expiry and correlation
        self.spool = spool
        self.bus = bus
        self.result_expiry_s = result_expiry_s
        self.online = False  # messages go straight out; else to the spool
        self.rejected = 0  # messages no broker would take (a bad topic): dropped, logged
        self._rejected_counted = 0  # of these and the spool's, how many the bus has counted
        self._generation = 0  # one per connection: a flush of an older one stops
        self._tasks: queue.SimpleQueue[Task | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._stopping = False
        self._stopped = False
        self._inline = threading.Lock()  # tasks posted after stop run on their caller

    # -- the thread -------------------------------------------------------------------

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="mqtt-out", daemon=True)
        self._thread.start()

    def post(self, task: Task) -> None:
        """Run ``task`` on the outbox thread, after every task posted before it."""
        if self._stopped:
            with self._inline:  # paho's thread is gone or going: no lock order to fear
                _run_task(task)
            return
        self._tasks.put(task)

    def drain(self, timeout: float) -> bool:
        """Wait until everything the agent produced so far has been published (or spooled):
        the agent's delivery thread first (events reach this outbox from there), then every
        task posted here. False when ``timeout`` passed."""
        if not self.bus.delivery.flush(timeout):
            return False
        done = threading.Event()
        self.post(done.set)
        return done.wait(timeout)

    def stop(self, last: Task | None = None) -> None:
        """Run ``last`` after what is queued, then end the thread; later tasks run on
        their caller, offline (to the spool)."""
        self._stopping = True
        if last is not None:
            self._tasks.put(last)
        self._tasks.put(None)
        if self._thread is not None:
            self._thread.join(STOP_TIMEOUT_S)
            if self._thread.is_alive():
                log.warning("mqtt outbox still busy at stop; later messages are spooled")
        self.online = False
        self._stopped = True

    def _run(self) -> None:
        while (task := self._tasks.get()) is not None:
            _run_task(task)

    # -- connection state (called on paho's thread: no lock, no publish) -----------------

    def use_client(self, client: mqtt.Client, v5: bool) -> None:
        """Publish through ``client`` from now on (the adapter replaced its client to
        speak another protocol version). Called on the outbox thread, while offline."""
        self.client = client
        self.v5 = v5

    def went_offline(self) -> None:
        # The generation moves before the flag: a flush that sets ``online`` then checks
        # the generation can never leave it set for a dead connection.
        self._generation += 1
        self.online = False

    def came_online(self, republish: Task, announce: Task) -> None:
        """On connect: ``republish`` (spooled behind older messages), then flush the
        spool, then ``announce`` (the status), all on the outbox thread."""
        generation = self._generation

        def begin() -> None:
            if generation == self._generation and not self._stopping:
                republish()
                self._flush_step(generation, announce)

        self.post(begin)

    def _flush_step(self, generation: int, announce: Task) -> None:
        if generation != self._generation or self._stopping or not self.client.is_connected():
            return  # a newer connection (or none) takes over
        if not self._flush_spool():
            retry = threading.Timer(
                FLUSH_RETRY_S, self.post, args=(lambda: self._flush_step(generation, announce),)
            )
            retry.daemon = True
            retry.start()
            return
        self.online = True
        if generation != self._generation:
            self.online = False
            return
        announce()

    # -- publishing (on the outbox thread) ------------------------------------------------

    def publish(
        self,
        topic: str,
        payload: bytes,
        correlation: bytes | None = None,
        qos: int = 1,
        retain: bool = False,
        expiry: bool = True,
    ) -> bool:
        """Publish now, or spool while offline. False when no broker would ever take it."""
        problem = publish_topic_problem(topic)
        if problem is not None:
            self._reject(topic, problem)
            return False
        expiry_s = self.result_expiry_s if expiry else None
        if not self.online:
            self.spool.append(topic, payload, qos, retain, expiry_s, correlation)
            self._spool_changed()
            return True
        properties = None
        if self.v5 and (expiry_s is not None or correlation is not None):
            properties = Properties(PacketTypes.PUBLISH)
            if expiry_s is not None:
                properties.MessageExpiryInterval = expiry_s
            if correlation is not None:
                properties.CorrelationData = correlation
        try:
            self.client.publish(topic, payload, qos=qos, retain=retain, properties=properties)
        except (ValueError, TypeError) as exc:
            self._reject(topic, str(exc))
            return False
        return True

    def _reject(self, topic: str, reason: str) -> None:
        self.rejected += 1
        log.error(
            "message cannot be published: dropped",
            topic=ascii(topic)[1:-1][:300],
            reason=reason,
            rejected=self.rejected,
        )
        self._rejected_changed()

    def _spool_changed(self) -> None:
        self.bus.spool_size = self.spool.size
        self.bus.metrics.spool_bytes.set(self.spool.total_bytes)
        self._rejected_changed()

    def _rejected_changed(self) -> None:
        """What was dropped here and what the spool set aside, for /stats and the metrics."""
        total = self.rejected + self.spool.rejected
        if total > self._rejected_counted:
            self.bus.metrics.mqtt_rejected.inc(total - self._rejected_counted)
            self.bus.mqtt_rejected += total - self._rejected_counted
            self._rejected_counted = total

    def _flush_spool(self, batch: int = 100) -> bool:
        """Publish spooled messages in order, a batch at a time, each removed once the
        broker acknowledged it. True when the spool is empty."""
        now = time.time()
        sent: list[tuple[SpooledMessage, mqtt.MQTTMessageInfo]] = []
        for message in self.spool.pending(batch):
            if message.expired(now):
                self.spool.remove(message)
                continue
            info = self._publish_spooled(message, now)
            if info is not None:
                sent.append((message, info))
        try:
            for message, info in sent:
                info.wait_for_publish(timeout=FLUSH_TIMEOUT_S)
                if not info.is_published():
                    break
                self.spool.remove(message)
        except (RuntimeError, ValueError):  # the connection dropped meanwhile
            pass
        self._spool_changed()
        return self.spool.size == 0

    def _publish_spooled(self, message: SpooledMessage, now: float) -> mqtt.MQTTMessageInfo | None:
        """None when the message can never be published: it is moved aside."""
        problem = publish_topic_problem(message.topic)
        if problem is not None:
            self.spool.set_aside(message.path, f"topic {ascii(message.topic)[:200]}: {problem}")
            return None
        try:
            properties = None
            if self.v5:
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
        except (ValueError, TypeError) as exc:
            self.spool.set_aside(message.path, f"{type(exc).__name__}: {exc}")
            return None


def _run_task(task: Task) -> None:
    try:
        task()
    except Exception:  # the one publishing thread must outlive any bug
        log.exception("mqtt outbox task failed")
