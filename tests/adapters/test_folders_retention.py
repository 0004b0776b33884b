"""Retention of processed/ and failed/: expired day folders go, everything else stays."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from pathlib import Path

from adapters.folders.retention import sweep
from tests.adapters.test_folders_support import FolderAgents, wait_for


def day_folder(data_root: Path, base: str, day: date) -> Path:
    folder = data_root / base / day.isoformat() / "Insp" / "R1" / "infer"
    folder.mkdir(parents=True)
    (folder / "part.png").write_bytes(b"image")
    (folder / "part.result.json").write_text("{}")
    return data_root / base / day.isoformat()


def test_sweep_removes_only_expired_day_folders(tmp_path: Path) -> None:
    today = date(2025, 10, 26)
    kept = [
        day_folder(tmp_path, "processed", today),
        day_folder(tmp_path, "processed", today - timedelta(days=7)),  # the 7th day back
        day_folder(tmp_path, "failed", today - timedelta(days=3)),
    ]
    expired = [
        day_folder(tmp_path, "processed", today - timedelta(days=8)),
        day_folder(tmp_path, "failed", today - timedelta(days=400)),
    ]
    others = [tmp_path / "processed" / ".state" / "intents", tmp_path / "failed" / "2020-13-45"]
    others += [tmp_path / "processed" / "keep-me-2020-01-01"]
    for folder in others:
        folder.mkdir(parents=True)
    (tmp_path / "processed" / "2020-01-01").write_text("a file, not a day folder")

    removed = sweep(tmp_path, retention_days=7, today=today)

    assert sorted(removed) == sorted(expired)
    assert all(not f.exists() for f in expired)
    assert all(f.is_dir() for f in kept + others)
    assert (tmp_path / "processed" / "2020-01-01").is_file()


def test_zero_keeps_everything(tmp_path: Path) -> None:
    old = day_folder(tmp_path, "processed", date(2000, 1, 1))
    assert sweep(tmp_path, retention_days=0) == [] and old.is_dir()


def test_the_folder_adapter_sweeps_by_itself(tmp_path: Path, agents: FolderAgents) -> None:
    data = tmp_path / "data"
    today = datetime.now(UTC).date()
    old = [
        day_folder(data, "processed", today - timedelta(days=3)),
        day_folder(data, "failed", today - timedelta(days=30)),
    ]
    recent = day_folder(data, "processed", today - timedelta(days=1))
    agents.make(data, retention_days=2)
    wait_for(lambda: not any(f.exists() for f in old), 30, "the expired day folders to go")
    assert recent.is_dir() and (data / "processed" / ".state").is_dir()
