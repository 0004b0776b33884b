"""Loaded memories per ROI, reloaded when the file on disk changes.

Another agent process sharing the data root may refit a ROI at any time: every lookup
compares the file's signature (inode, size, mtime) with the cached one, so no answer
ever comes from a stale memory.
"""

from __future__ import annotations

import threading
from collections import OrderedDict

from engine.keys import RoiKey
from engine.memory import Memory
from engine.store import ModelStore, Signature


class ModelCache:
    def __init__(self, store: ModelStore, capacity: int = 64) -> None:
        self.store = store
        self.capacity = capacity
        self._entries: OrderedDict[RoiKey, tuple[Signature, Memory]] = OrderedDict()
        self._lock = threading.Lock()
        self.loads = 0  # how many times a memory was read from disk

    def get(self, key: RoiKey) -> Memory | None:
        signature = self.store.signature(key)
        if signature is None:
            with self._lock:
                self._entries.pop(key, None)
            return None
        with self._lock:
            entry = self._entries.get(key)
            if entry is not None and entry[0] == signature:
                self._entries.move_to_end(key)
                return entry[1]
        memory = self.store.load_memory(key)
        if memory is None:
            return None
        with self._lock:
            self.loads += 1
            self._entries[key] = (signature, memory)
            self._entries.move_to_end(key)
            while len(self._entries) > self.capacity:
                self._entries.popitem(last=False)
        return memory

    def put(self, key: RoiKey, memory: Memory) -> None:
        """After our own save: cache under the new signature, no reload needed."""
        signature = self.store.signature(key)
        if signature is not None:
            with self._lock:
                self._entries[key] = (signature, memory)
