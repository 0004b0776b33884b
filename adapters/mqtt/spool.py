"""A bounded, ordered disk spool for MQTT messages produced while the broker is away.

One JSON file per message, named by a growing sequence number and written atomically,
so the spool survives a crash or restart of the agent. Over ``max_bytes`` the oldest
messages are dropped first, and counted. A spool that cannot be written (a read-only or
full data root) drops what it is given, counted and logged: the agent keeps running.

Each agent has a folder of its own (``spool/mqtt/<b64 agent_id>/``): agents sharing a data
root would otherwise number their files alike and overwrite, publish and delete each
other's messages. Files of the older shared layout (``spool/mqtt/*.json``) are taken over
by the first agent that starts. A message that can never be published (unreadable, or a
topic the client refuses) is moved aside to ``rejected/``, counted and logged, so it never
holds up the messages behind it.
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog

from engine.atomic import atomic_write_bytes
from engine.errors import storage_error
from engine.keys import b64_name

log = structlog.get_logger("adapters.mqtt.spool")

REJECTED = "rejected"


def spool_folder(data_root: Path, agent_id: str) -> Path:
    """Where the agent ``agent_id`` spools its MQTT messages."""
    return data_root / "spool" / "mqtt" / b64_name(agent_id)


def _number(path: Path) -> int | None:
    """The sequence number a spool file is named by; None for any other file."""
    return int(path.stem) if path.stem.isdigit() and path.stem.isascii() else None


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
    def __init__(self, folder: Path, max_bytes: int, legacy: Path | None = None) -> None:
        """``legacy``: a folder of the older shared layout whose files this spool takes
        over (they are older than anything it holds, so they go first)."""
        self.folder = folder
        self.max_bytes = max_bytes
        self.dropped = 0  # messages dropped to stay under max_bytes, or not writable
        self.rejected = 0  # messages moved aside: they could never be published
        self._skipped: set[Path] = set()  # could not even be moved aside (read-only)
        self._lock = threading.Lock()
        try:
            folder.mkdir(parents=True, exist_ok=True)
            if legacy is not None:
                self._adopt(legacy)
            existing = self._files()
        except OSError as exc:
            log.error("spool unavailable", reason=str(storage_error(exc, folder)))
            existing = []
        self._next = (_number(existing[-1]) or 0) + 1 if existing else 1
        self._bytes = sum(p.stat().st_size for p in existing)
        # Kept alongside the files so that size is not a directory listing per message.
        self._count = len(existing)

    def _files(self) -> list[Path]:
        numbered = [(n, p) for p in self.folder.glob("*.json") if (n := _number(p)) is not None]
        return [path for _, path in sorted(numbered) if path not in self._skipped]

    def _adopt(self, legacy: Path) -> None:
        """Take over the shared layout's files, in their order (after an upgrade the own
        folder is empty, so they go first). Two agents starting together each get some:
        a rename moves a file once."""
        old = sorted((n, p) for p in legacy.glob("*.json") if (n := _number(p)) is not None)
        files = self._files()
        next_number = (_number(files[-1]) or 0) + 1 if files else 1
        taken = 0
        for _, path in old:
            with contextlib.suppress(FileNotFoundError):  # another agent took it
                os.rename(path, self.folder / f"{next_number:020d}.json")
                next_number += 1
                taken += 1
        if taken:
            log.info("spool of the shared layout taken over", messages=taken, folder=str(legacy))

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
        if self._bytes <= self.max_bytes:
            return  # no directory listing per message: 60 ms each with 3,000 spooled
        files = self._files()
        while self._bytes > self.max_bytes and len(files) > 1:
            self._forget(files.pop(0), unlink=True)
            self.dropped += 1
            log.warning("spool full: oldest message dropped", dropped=self.dropped)

    def pending(self, limit: int | None = None) -> list[SpooledMessage]:
        """The oldest ``limit`` messages (all by default) in the order they were spooled;
        an unreadable file is moved aside (it would otherwise stay at the head for good)."""
        out = []
        with self._lock:
            files = self._files()[:limit]
        for path in files:
            try:
                out.append(_read(path))
            except FileNotFoundError:
                continue
            except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
                self.set_aside(path, f"unreadable: {type(exc).__name__}: {exc}")
        return out

    def remove(self, message: SpooledMessage) -> None:
        with self._lock:
            self._forget(message.path, unlink=True)

    def set_aside(self, path: Path, reason: str) -> None:
        """Move a message that can never be published to ``rejected/`` (kept for a person
        to look at), counted and logged."""
        with self._lock:
            target = self.folder / REJECTED / path.name
            try:
                target.parent.mkdir(exist_ok=True)
                size = path.stat().st_size
                os.replace(path, target)
            except FileNotFoundError:
                return
            except OSError as exc:  # cannot move it (read-only): it must not block the queue
                log.error("spool file could not be moved aside", file=path.name, error=str(exc))
                self._skipped.add(path)
                self._forget(path, unlink=False)
                return
            self._bytes -= size
            self._count -= 1
            self.rejected += 1
        log.error(
            "spooled message cannot be published: moved aside",
            file=path.name,
            to=str(target),
            reason=reason,
            rejected=self.rejected,
        )

    def _forget(self, path: Path, unlink: bool) -> None:
        """Count ``path`` out of the spool (deleting it when ``unlink``). A file that cannot
        be deleted (read-only) is skipped from then on: sent once, never again."""
        try:
            size = path.stat().st_size
        except OSError:
            return
        if unlink:
            try:
                path.unlink()
            except FileNotFoundError:
                return
            except OSError as exc:
                log.error("spool file could not be removed", file=path.name, error=str(exc))
                self._skipped.add(path)
        self._bytes -= size
        self._count -= 1


def _read(path: Path) -> SpooledMessage:
    record: dict[str, Any] = json.loads(path.read_bytes())
    expiry = record.get("expiry_s")
    correlation = record.get("correlation")
    return SpooledMessage(
        path=path,
        topic=str(record["topic"]),
        payload=record["payload"].encode("utf-8"),
        qos=int(record["qos"]),
        retain=bool(record["retain"]),
        spooled_at=float(record["spooled_at"]),
        expiry_s=int(expiry) if expiry is not None else None,
        response_correlation=str(correlation) if correlation is not None else None,
    )
