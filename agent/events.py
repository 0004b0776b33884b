"""The core's events (contract section 9): ``verdict``, ``alert``, ``state``, ``health``.

The core emits each event once, whatever adapter caused it; every adapter that is on
carries it (MQTT maps them to its topics, HTTP streams them on ``GET /events``, OPC UA
writes variables). Each event gets the next ``seq`` of this agent run, so a consumer
sees gaps. A byte-bounded backlog of the latest events lets a reconnecting client
(``Last-Event-ID``) get what it missed.

Listeners are called on the delivery thread, in ``seq`` order, never on the worker: a
slow listener delays other listeners, never an inference.
"""

from __future__ import annotations

import contextlib
import json
import threading
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import structlog

from agent.delivery import Delivery

log = structlog.get_logger("agent.events")

EVENT_NAMES = ("verdict", "alert", "state", "health")


@dataclass(frozen=True)
class Event:
    seq: int
    name: str  # one of EVENT_NAMES
    body: Mapping[str, Any]  # JSON-ready; the contract's body for ``name``
    data: str = field(repr=False)  # ``body`` as compact JSON, encoded once for every adapter

    @property
    def size(self) -> int:
        return len(self.data) + 64

    def matches(self, filters: Mapping[str, str]) -> bool:
        """True when every filter (e.g. ``role_id``) equals the body's field. An event
        without that field (``health``) passes: it concerns every ROI."""
        return all(self.body.get(k, v) == v for k, v in filters.items())


Listener = Callable[[Event], None]


class Events:
    def __init__(self, delivery: Delivery, backlog_bytes: int = 1024 * 1024) -> None:
        self.delivery = delivery
        self.backlog_bytes = backlog_bytes
        self._backlog: deque[Event] = deque()
        self._backlog_size = 0
        self._listeners: list[Listener] = []
        self._seq = 0
        self._lock = threading.Lock()

    @property
    def last_seq(self) -> int:
        return self._seq

    def emit(self, name: str, body: Mapping[str, Any]) -> Event:
        """Give the event its ``seq``, keep it in the backlog, and hand it to every
        listener on the delivery thread. A ``verdict`` body gets its ``seq`` too."""
        if name not in EVENT_NAMES:
            raise ValueError(f"unknown event {name!r}")
        with self._lock:
            self._seq += 1
            payload = {**body, "seq": self._seq} if name == "verdict" else dict(body)
            event = Event(self._seq, name, payload, json.dumps(payload, separators=(",", ":")))
            self._keep(event)
            listeners = list(self._listeners)
        if listeners:
            self.delivery.post(lambda: self._deliver(event, listeners), droppable=True)
        return event

    def _keep(self, event: Event) -> None:
        self._backlog.append(event)
        self._backlog_size += event.size
        while self._backlog and self._backlog_size > self.backlog_bytes:
            self._backlog_size -= self._backlog.popleft().size

    @staticmethod
    def _deliver(event: Event, listeners: list[Listener]) -> None:
        for listener in listeners:
            try:
                listener(event)
            except Exception:  # one adapter's bug must not starve the others
                log.exception("event listener failed", event=event.name, seq=event.seq)

    def subscribe(self, listener: Listener) -> Callable[[], None]:
        """Call ``listener`` with every later event; returns the function that stops it."""
        with self._lock:
            self._listeners.append(listener)

        def unsubscribe() -> None:
            with self._lock, contextlib.suppress(ValueError):
                self._listeners.remove(listener)

        return unsubscribe

    def since(self, seq: int) -> tuple[list[Event], bool]:
        """The backlog's events after ``seq``, and whether some after it were already
        evicted (the client missed events it cannot get back)."""
        with self._lock:
            events = [e for e in self._backlog if e.seq > seq]
            oldest = self._backlog[0].seq if self._backlog else self._seq + 1
        missed = seq + 1 < oldest and seq < self._seq
        return events, missed


def agent_status(health: Mapping[str, Any]) -> str:
    """The line-facing status word of a ``health`` body: ``loading`` while the model loads,
    ``online`` once inspections can be served, ``degraded`` when the model cannot be
    loaded (the body's ``reason`` says why). MQTT's status topic and OPC UA's ``Status``
    both say this."""
    status = health.get("status")
    if status == "loading":
        return "loading"
    if status in ("ok", "degraded"):  # degraded there: a broker away; inspections still run
        return "online"
    return "degraded"
