"""Idempotency journal: the first result of each mutating request, kept for an hour.

MQTT delivers at least once, so a ``fit_ok`` may arrive twice. The journal lives in the
data root (SQLite, WAL) so a duplicate is recognised after a restart and by every agent
process sharing the root. Each result is kept with the request's digest
(``agent.request_digest``): a repeat is the same request id with the same inputs; the same
id with other inputs is another request, which the worker refuses.

The agent must start whatever state the file is in. A file that is not a database (a
disk error, a bad restore) is set aside as ``requests.sqlite.corrupt-<time>`` and a new
journal started. A data root that cannot be written (read-only: an inspection-only node)
gets a journal in memory: nothing can be stored there anyway, so nothing can be applied
twice across a restart.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog

RETENTION_S = 3600.0
SCHEMA = (
    "CREATE TABLE IF NOT EXISTS results (command TEXT, request_id TEXT, at REAL,"
    " body TEXT, digest TEXT, PRIMARY KEY (command, request_id))"
)


@dataclass(frozen=True)
class Recorded:
    body: dict[str, Any]
    digest: str | None  # None: recorded before digests were kept

    def same_request(self, digest: str) -> bool:
        return self.digest is None or self.digest == digest


log = structlog.get_logger("agent.journal")


class Journal:
    def __init__(self, path: Path, retention_s: float = RETENTION_S) -> None:
        self.path = path
        try:
            self._db = self._open(path)
        except (sqlite3.Error, OSError) as exc:
            # OperationalError: cannot open or write (read-only); OSError: the folder
            # cannot be created; any other DatabaseError: the file is not a database.
            corrupt = type(exc) is sqlite3.DatabaseError and path.is_file()
            try:
                self._db = self._set_aside(path, exc) if corrupt else self._in_memory(exc)
            except (sqlite3.Error, OSError) as again:
                self._db = self._in_memory(again)
        self._lock = threading.Lock()
        self.retention_s = retention_s

    @staticmethod
    def _open(path: Path) -> sqlite3.Connection:
        path.parent.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(path, check_same_thread=False, timeout=30)
        try:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=FULL")
            db.execute(SCHEMA)
            _add_digest_column(db)
            db.commit()
            # A write probe: a read-only database opens and reads, but refuses at the first
            # reply; better to know now (and say so once) than at every command.
            db.execute("DELETE FROM results WHERE at < 0")
            db.commit()
        except BaseException:
            db.close()
            raise
        return db

    def _set_aside(self, path: Path, exc: Exception) -> sqlite3.Connection:
        aside = path.with_name(f"{path.name}.corrupt-{time.strftime('%Y%m%dT%H%M%S')}")
        log.error("journal unreadable, set aside", path=str(path), aside=str(aside), error=str(exc))
        for suffix in ("", "-wal", "-shm"):
            part = path.with_name(path.name + suffix)
            if part.exists():
                part.rename(aside.with_name(aside.name + suffix))
        return self._open(path)

    def _in_memory(self, exc: Exception) -> sqlite3.Connection:
        log.warning(
            "journal not writable, kept in memory",
            path=str(self.path),
            error=str(exc),
            effect="duplicate requests are recognised until the agent restarts",
        )
        db = sqlite3.connect(":memory:", check_same_thread=False)
        db.execute(SCHEMA)
        return db

    def get(self, command: str, request_id: str) -> Recorded | None:
        with self._lock:
            row = self._db.execute(
                "SELECT body, digest FROM results WHERE command = ? AND request_id = ? AND at > ?",
                (command, request_id, time.time() - self.retention_s),
            ).fetchone()
        return None if row is None else Recorded(dict(json.loads(row[0])), row[1])

    def put(self, command: str, request_id: str, body: dict[str, Any], digest: str) -> None:
        with self._lock:
            self._db.execute(
                "INSERT OR REPLACE INTO results (command, request_id, at, body, digest)"
                " VALUES (?, ?, ?, ?, ?)",
                (command, request_id, time.time(), json.dumps(body), digest),
            )
            self._db.execute("DELETE FROM results WHERE at < ?", (time.time() - self.retention_s,))
            self._db.commit()

    def close(self) -> None:
        with self._lock:
            self._db.close()


def _add_digest_column(db: sqlite3.Connection) -> None:
    """A journal of an older version has no digest column: its rows count as matching."""
    columns = {row[1] for row in db.execute("PRAGMA table_info(results)")}
    if "digest" not in columns:
        db.execute("ALTER TABLE results ADD COLUMN digest TEXT")
