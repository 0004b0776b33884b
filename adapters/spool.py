"""A bounded, ordered disk spool for MQTT messages produced while the broker is away.

One JSON file per message, named by a growing sequence number and written atomically,
so the spool survives a crash or restart of the agent. Over ``max_bytes`` the oldest
messages are dropped first, and counted. A spool that cannot be written (a read-only or
full data root) drops what it is given, counted and logged: the agent keeps running.
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog

from engine.atomic import atomic_write_bytes
from engine.errors import storage_error

log = structlog.get_logger("adapters.spool")


@dataclass(frozen=True)
class SpooledMessage:
    path: Path
    topic: str
    payload: bytes
    qos: int
    retain: bool
    spooled_at: float
    expiry_s: int | None
    response_correlation: str | None  # hex of the request's CorrelationData

    def expired(self, now: float) -> bool:
        return self.expiry_s is not None and now - self.spooled_at > self.expiry_s


class Spool:
    def __init__(self, folder: Path, max_bytes: int) -> None:
        self.folder = folder
        self.max_bytes = max_bytes
        self.dropped = 0  # messages dropped to stay under max_bytes, or not writable
        self._lock = threading.Lock()
        try:
            folder.mkdir(parents=True, exist_ok=True)
            existing = self._files()
        except OSError as exc:
            log.error("spool unavailable", reason=str(storage_error(exc, folder)))
            existing = []
        self._next = int(existing[-1].stem) + 1 if existing else 1
        self._bytes = sum(p.stat().st_size for p in existing)
        # Kept alongside the files so that size is not a directory listing per message.
        self._count = len(existing)

    def _files(self) -> list[Path]:
        return sorted(self.folder.glob("*.json"), key=lambda p: int(p.stem))

    @property
    def size(self) -> int:
        return self._count

    @property
    def total_bytes(self) -> int:
        return self._bytes

    def append(
        self,
        topic: str,
        payload: bytes,
        qos: int = 1,
        retain: bool = False,
        expiry_s: int | None = None,
        correlation: bytes | None = None,
    ) -> None:
        record = {
            "topic": topic,
            "payload": payload.decode("utf-8"),
            "qos": qos,
            "retain": retain,
            "spooled_at": time.time(),
            "expiry_s": expiry_s,
            "correlation": correlation.hex() if correlation is not None else None,
        }
        data = json.dumps(record).encode()
        with self._lock:
            path = self.folder / f"{self._next:020d}.json"
            self._next += 1
            try:
                atomic_write_bytes(path, data)
            except OSError as exc:
                self.dropped += 1
                log.error("spool write failed: message dropped", reason=str(exc), topic=topic)
                return
            self._bytes += len(data)
            self._count += 1
            self._enforce_cap()

    def _enforce_cap(self) -> None:
        files = self._files()
        while self._bytes > self.max_bytes and len(files) > 1:
            oldest = files.pop(0)
            size = oldest.stat().st_size
            oldest.unlink(missing_ok=True)
            self._bytes -= size
            self._count -= 1
            self.dropped += 1
            log.warning("spool full: oldest message dropped", dropped=self.dropped)

    def pending(self, limit: int | None = None) -> list[SpooledMessage]:
        """The oldest ``limit`` messages (all by default) in the order they were spooled;
        unreadable files are skipped."""
        out = []
        with self._lock:
            files = self._files()[:limit]
        for path in files:
            try:
                record: dict[str, Any] = json.loads(path.read_bytes())
                out.append(
                    SpooledMessage(
                        path=path,
                        topic=record["topic"],
                        payload=record["payload"].encode("utf-8"),
                        qos=int(record["qos"]),
                        retain=bool(record["retain"]),
                        spooled_at=float(record["spooled_at"]),
                        expiry_s=record.get("expiry_s"),
                        response_correlation=record.get("correlation"),
                    )
                )
            except (OSError, ValueError, KeyError) as exc:
                log.error("unreadable spool file skipped", file=path.name, error=str(exc))
        return out

    def remove(self, message: SpooledMessage) -> None:
        with self._lock:
            try:
                size = message.path.stat().st_size
            except FileNotFoundError:
                return
            message.path.unlink(missing_ok=True)
            self._bytes -= size
            self._count -= 1
