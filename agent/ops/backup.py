"""``bdi-agent backup FILE.tar.gz``: a consistent snapshot while the agent runs.

Archived, in this order: ``models/`` (each memory read together with its calibration,
see ``snapshot.read_memory_pair``), ``datasets/``, ``weights/`` and the idempotency
journal (through SQLite's online backup, never a copy of a live database file). The
order matters: a memory is taken before the samples it was fitted from, so samples only
ever get *added* between the two and every memory's samples are in the archive.

Left out on purpose: ``cache/`` (embeddings, recomputed by a refit), ``inbox/``,
``processed/``, ``failed/`` and ``spool/`` (traffic, not state).
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import tarfile
import tempfile
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from agent.ops.errors import OpsError
from agent.ops.snapshot import (
    ATTEMPTS,
    add_bytes,
    calibration_for,
    json_readable,
    npz_readable,
    open_gz_writer,
    read_memory_pair,
    read_whole,
    skipped_name,
)
from engine.atomic import atomic_write

if TYPE_CHECKING:
    from agent.config import Settings

MANIFEST = "BACKUP.json"
SECTIONS = ("models", "datasets", "weights", "journal")
JOURNAL_FILE = "requests.sqlite"


def section_roots(settings: Settings) -> dict[str, Path]:
    """Where each archived section lives (``models`` may be outside the data root)."""
    root = Path(settings.data_root)
    return {
        "models": Path(settings.models_root),
        "datasets": root / "datasets",
        "weights": root / "weights",
        "journal": root / "journal",
    }


@dataclass
class BackupReport:
    path: Path
    files: int = 0
    bytes: int = 0
    memories: int = 0
    skipped: list[str] = field(default_factory=list)  # unreadable, left out (with why)

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": str(self.path),
            "files": self.files,
            "bytes": self.bytes,
            "memories": self.memories,
            "skipped": self.skipped,
        }


def backup(settings: Settings, destination: Path) -> BackupReport:
    """Write the archive (atomically: a crash leaves no half archive under the name)."""
    from agent import __version__

    destination = Path(destination).expanduser().absolute()
    report = BackupReport(destination)
    roots = section_roots(settings)

    def write(handle: IO[bytes]) -> None:
        with open_gz_writer(handle) as tar:
            _add_models(tar, roots["models"], report, destination)
            _add_tree(tar, "datasets", roots["datasets"], report, destination)
            _add_tree(tar, "weights", roots["weights"], report, destination)
            _add_journal(tar, roots["journal"] / JOURNAL_FILE, report)
            manifest = {
                "format": 1,
                "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
                "agent_version": __version__,
                "data_root": str(settings.data_root),
                **report.to_dict(),
            }
            add_bytes(tar, MANIFEST, json.dumps(manifest, indent=2).encode())

    destination.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(destination, write)
    return report


def _walk(root: Path, destination: Path) -> list[Path]:
    """Files under ``root``, sorted, without temp/hidden files and the archive itself."""
    out = []
    for folder, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if not skipped_name(d))
        for name in sorted(files):
            path = Path(folder) / name
            if not skipped_name(name) and path != destination:
                out.append(path)
    return out


def _add_models(tar: tarfile.TarFile, root: Path, report: BackupReport, dest: Path) -> None:
    files = _walk(root, dest)
    paired = {calibration_for(p) for p in files if p.suffix == ".npz"}
    for path in files:
        name = "models/" + path.relative_to(root).as_posix()
        if path.suffix == ".npz":
            try:
                pair = read_memory_pair(path)
            except OpsError as exc:
                report.skipped.append(f"{name}: {exc}")
                continue
            if pair is None:
                continue  # deleted since the listing
            memory, calibration = pair
            _add(tar, name, memory, report)
            report.memories += 1
            if calibration is not None:
                calib = calibration_for(path)
                _add(tar, "models/" + calib.relative_to(root).as_posix(), calibration, report)
        elif path in paired:
            continue  # taken with its memory
        elif path.name.endswith("_index.faiss"):
            continue  # an optional cache; a stale one must not come back with the memory
        else:
            _add_file(tar, name, path, report)


def _add_tree(
    tar: tarfile.TarFile, section: str, root: Path, report: BackupReport, dest: Path
) -> None:
    for path in _walk(root, dest):
        _add_file(tar, f"{section}/{path.relative_to(root).as_posix()}", path, report)


def _add_file(tar: tarfile.TarFile, name: str, path: Path, report: BackupReport) -> None:
    """One file read whole through one handle; .npz and calibration JSON are checked
    and read again if they were replaced mid-read (a writer that is not atomic)."""
    for attempt in range(ATTEMPTS):
        got = read_whole(path)
        if got is None:
            return  # deleted since the listing
        data = got[0]
        if _readable(path, data):
            _add(tar, name, data, report)
            return
        time.sleep(0.05 * (attempt + 1))
    report.skipped.append(f"{name}: unreadable after {ATTEMPTS} tries")


def _readable(path: Path, data: bytes) -> bool:
    if path.suffix == ".npz":
        return npz_readable(data)
    if path.name.endswith("calib.json") or path.name == "default.json":
        return json_readable(data)
    if path.name.endswith(".sha256"):
        return True
    sidecar = path.with_name(path.name + ".sha256")  # imported weights carry their hash
    if sidecar.is_file():
        expected = sidecar.read_text(encoding="utf-8").split()[0]
        return hashlib.sha256(data).hexdigest() == expected
    return True


def _add(tar: tarfile.TarFile, name: str, data: bytes, report: BackupReport) -> None:
    add_bytes(tar, name, data)
    report.files += 1
    report.bytes += len(data)


def _add_journal(tar: tarfile.TarFile, path: Path, report: BackupReport) -> None:
    """SQLite's online backup: one consistent database, WAL included, while it is used."""
    if not path.is_file():
        return
    with tempfile.TemporaryDirectory(prefix="bdi-backup-") as tmp:
        copy = Path(tmp) / JOURNAL_FILE
        try:
            source = sqlite3.connect(path, timeout=30)
            target = sqlite3.connect(copy)
            try:
                source.backup(target)
            finally:
                target.close()
                source.close()
        except sqlite3.Error as exc:
            report.skipped.append(f"journal/{JOURNAL_FILE}: {exc}")
            return
        _add(tar, f"journal/{JOURNAL_FILE}", copy.read_bytes(), report)
