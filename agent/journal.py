"""Idempotency journal: the first result of each mutating request, kept for an hour.

MQTT delivers at least once, so a ``fit_ok`` may arrive twice. The journal lives in the
data root (SQLite, WAL) so a duplicate is recognised after a restart and by every agent
process sharing the root.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

RETENTION_S = 3600.0


class Journal:
    def __init__(self, path: Path, retention_s: float = RETENTION_S) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(path, check_same_thread=False, timeout=30)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS results (command TEXT, request_id TEXT, at REAL,"
            " body TEXT, PRIMARY KEY (command, request_id))"
        )
        self._db.commit()
        self._lock = threading.Lock()
        self.retention_s = retention_s

    def get(self, command: str, request_id: str) -> dict[str, Any] | None:
        with self._lock:
            row = self._db.execute(
                "SELECT body FROM results WHERE command = ? AND request_id = ? AND at > ?",
                (command, request_id, time.time() - self.retention_s),
            ).fetchone()
        return None if row is None else dict(json.loads(row[0]))

    def put(self, command: str, request_id: str, body: dict[str, Any]) -> None:
        with self._lock:
            self._db.execute(
                "INSERT OR REPLACE INTO results VALUES (?, ?, ?, ?)",
                (command, request_id, time.time(), json.dumps(body)),
            )
            self._db.execute("DELETE FROM results WHERE at < ?", (time.time() - self.retention_s,))
            self._db.commit()

    def close(self) -> None:
        with self._lock:
            self._db.close()
