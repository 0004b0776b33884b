"""Retention of ``processed/`` and ``failed/``: day folders older than
``folders.retention_days`` are deleted; 0 (the default) keeps everything.

Handled files are filed under their UTC day (``processed/2025-10-26/...``), so retention
removes whole day folders: with ``retention_days: 30`` today and the 30 days before it are
kept. Anything else there (the adapter's own ``.state``, folders people made, names that
are not a date) is never touched. The folder adapter sweeps at start and after every
inbox rescan (``rescan_s``), on its I/O thread.
"""

from __future__ import annotations

import shutil
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import structlog

log = structlog.get_logger("adapters.folders")

SWEPT = ("processed", "failed")


def expired_days(base: Path, retention_days: int, today: date) -> list[Path]:
    """The day folders of ``base`` whose date is more than ``retention_days`` ago."""
    oldest_kept = today - timedelta(days=retention_days)
    try:
        entries = sorted(base.iterdir())
    except OSError:  # not there yet, or unreadable: nothing to sweep
        return []
    out = []
    for entry in entries:
        day = _day(entry.name)
        if day is not None and day < oldest_kept and entry.is_dir() and not entry.is_symlink():
            out.append(entry)
    return out


def sweep(data_root: Path, retention_days: int, today: date | None = None) -> list[Path]:
    """Delete the expired day folders under ``processed/`` and ``failed/``; the ones
    removed. A folder that cannot be removed is logged and tried again next sweep."""
    if retention_days <= 0:
        return []
    today = today or datetime.now(UTC).date()
    removed = []
    for name in SWEPT:
        for folder in expired_days(data_root / name, retention_days, today):
            try:
                shutil.rmtree(folder)
            except OSError as exc:
                log.error("retention: day folder not removed", folder=str(folder), error=str(exc))
                continue
            removed.append(folder)
    if removed:
        log.info(
            "retention: day folders removed",
            retention_days=retention_days,
            folders=[str(f) for f in removed],
        )
    return removed


def _day(name: str) -> date | None:
    if len(name) != 10:  # YYYY-MM-DD, nothing else
        return None
    try:
        return date.fromisoformat(name)
    except ValueError:
        return None
