"""Replies to recent read commands, so that a repeated read is answered, not run again.

A read (``infer``, ``manifest``...) that arrives again is a QoS 1 redelivery or a PLC
retrying after its timeout: it gets its first reply again. A repeat is the same command
with the same ``request_id`` *and* the same inputs (the request's digest): a reused id with
other inputs is a new request and runs.

Only successful replies are kept: a ``busy`` or any other error is forgotten, so a retry
runs. The store is bounded in entries and in bytes (an ``infer`` reply with a heatmap is
hundreds of KB); the oldest replies go first, and a repeat of one that is gone simply
runs again.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass

DUPLICATE_WINDOW = 20_000  # requests remembered, answered or in flight


@dataclass(frozen=True)
class Sent:
    """A reply as it was published: enough to publish it again."""

    topic: str
    payload: bytes
    correlation: bytes | None

    @property
    def size(self) -> int:
        return len(self.payload) + len(self.topic) + len(self.correlation or b"")


def repeat_key(command: str, request_id: str, digest: str) -> str:
    return f"{command}\0{request_id}\0{digest}"


class RecentReplies:
    def __init__(self, max_bytes: int, max_entries: int = DUPLICATE_WINDOW) -> None:
        self.max_bytes = max_bytes
        self.max_entries = max_entries
        self._entries: OrderedDict[str, Sent | None] = OrderedDict()  # None: in flight
        self._bytes = 0
        self._lock = threading.Lock()

    @property
    def total_bytes(self) -> int:
        with self._lock:
            return self._bytes

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)

    def claim(self, key: str) -> tuple[bool, Sent | None]:
        """``(True, None)`` for a new request, now marked in flight; ``(False, sent)`` for
        a repeat: ``sent`` is its first reply, or None while that is still being made."""
        with self._lock:
            if key in self._entries:
                return False, self._entries[key]
            self._entries[key] = None
            while len(self._entries) > self.max_entries:
                self._pop_oldest()
            return True, None

    def answered(self, key: str, sent: Sent) -> None:
        """Keep ``sent`` for repeats of ``key``; older replies make room for it."""
        with self._lock:
            if key not in self._entries:
                return  # pushed out while it ran
            earlier = self._entries.pop(key)
            if earlier is not None:
                self._bytes -= earlier.size
            if sent.size > self.max_bytes:
                return  # bigger than the whole store: a repeat runs again
            self._entries[key] = sent
            self._bytes += sent.size
            for old in list(self._entries):
                if self._bytes <= self.max_bytes:
                    break
                if self._entries[old] is not None:
                    self._bytes -= self._entries.pop(old).size  # type: ignore[union-attr]

    def forget(self, key: str) -> None:
        """The request failed (``busy``, ...): a repeat must run."""
        with self._lock:
            sent = self._entries.pop(key, None)
            if sent is not None:
                self._bytes -= sent.size

    def _pop_oldest(self) -> None:
        _, sent = self._entries.popitem(last=False)
        if sent is not None:
            self._bytes -= sent.size
