"""Replies to recent read commands, so that a repeated read is answered, not run again.

A read (``infer``, ``manifest``...) that arrives again is a QoS 1 redelivery or a PLC
retrying after its timeout: it gets its first reply again. A repeat is the same command
with the same ``request_id`` *and* the same inputs (the request's digest,
``agent.request_digest``): a reused id with other inputs is a new request and runs.

Only successful replies are kept: a ``busy`` or any other error is forgotten, so a retry
runs. A request still in flight after ``IN_FLIGHT_S`` counts as lost (a reply that was
never made must not silence its retries): its repeat runs again, which for a read does no
harm. A reply is an answer to repeats for ``REPLAY_S``: a retry comes within seconds and a
redelivery right after a reconnect; later, the same id with the same image (a PLC whose
counter started again, a reference part checked every shift) is judged anew, by a model
that may have been refitted since.

Bounded in bytes, everything counted: each reply's payload, topic and correlation data,
and a fixed ``ENTRY_BYTES`` per remembered request (its key, the bookkeeping), in flight
or answered; and at most ``max_entries`` requests. The oldest go first, and a repeat of
one that is gone simply runs again.
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass

DUPLICATE_WINDOW = 20_000  # requests remembered, answered or in flight
# What one remembered request costs besides its reply: the key (a fixed-size hash), the
# ordered dict's slot and node, the entry and the reply's object headers. Measured with
# tracemalloc at about 360 bytes; rounded up.
ENTRY_BYTES = 400
IN_FLIGHT_S = 60.0  # a read not answered within this is taken as lost
REPLAY_S = 600.0  # a reply answers repeats for this long


@dataclass(frozen=True)
class Sent:
    """A reply as it was published: enough to publish it again."""

    topic: str
    payload: bytes
    correlation: bytes | None

    @property
    def size(self) -> int:
        return len(self.payload) + len(self.topic) + len(self.correlation or b"")


@dataclass(slots=True)
class _Entry:
    sent: Sent | None  # None: in flight
    since: float  # time.monotonic() of the claim, then of the answer

    @property
    def size(self) -> int:
        return ENTRY_BYTES + (self.sent.size if self.sent is not None else 0)


def repeat_key(command: str, request_id: str, digest: str) -> str:
    """A fixed-size key (32 hex characters) whatever the request id's length."""
    parts = json.dumps([command, request_id, digest]).encode()  # unambiguous, any text
    return hashlib.blake2b(parts, digest_size=16).hexdigest()


class RecentReplies:
    def __init__(
        self,
        max_bytes: int,
        max_entries: int = DUPLICATE_WINDOW,
        in_flight_s: float = IN_FLIGHT_S,
        replay_s: float = REPLAY_S,
    ) -> None:
        self.max_bytes = max_bytes
        self.max_entries = max_entries
        self.in_flight_s = in_flight_s
        self.replay_s = replay_s
        self._entries: OrderedDict[str, _Entry] = OrderedDict()  # oldest first
        self._bytes = 0
        self._lock = threading.Lock()

    @property
    def total_bytes(self) -> int:
        """What the store holds, by its own count (payloads plus ``ENTRY_BYTES`` each)."""
        with self._lock:
            return self._bytes

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)

    def claim(self, key: str) -> tuple[bool, Sent | None]:
        """``(True, None)`` for a new request, now marked in flight; ``(False, sent)`` for
        a repeat: ``sent`` is its first reply, or None while that is still being made."""
        now = time.monotonic()
        with self._lock:
            entry = self._entries.get(key)
            if entry is not None:
                age = now - entry.since
                if age <= (self.in_flight_s if entry.sent is None else self.replay_s):
                    return False, entry.sent
                self._remove(key)  # lost in flight, or answered too long ago: this one runs
            self._add(key, _Entry(None, now))
            return True, None

    def answered(self, key: str, sent: Sent) -> None:
        """Keep ``sent`` for repeats of ``key``; older replies make room for it."""
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                return  # pushed out while it ran
            self._remove(key)
            self._add(key, _Entry(sent, time.monotonic()))

    def forget(self, key: str) -> None:
        """The request failed (``busy``, ...): a repeat must run."""
        with self._lock:
            if key in self._entries:
                self._remove(key)

    def _add(self, key: str, entry: _Entry) -> None:
        if entry.size > self.max_bytes:
            return  # bigger than the whole store: a repeat runs again
        self._entries[key] = entry
        self._bytes += entry.size
        while len(self._entries) > self.max_entries or self._bytes > self.max_bytes:
            _, oldest = self._entries.popitem(last=False)
            self._bytes -= oldest.size

    def _remove(self, key: str) -> None:
        self._bytes -= self._entries.pop(key).size
