"""``bdi-agent restore FILE.tar.gz``: put a backup back, safely.

- The archive is extracted with tarfile's ``data`` filter into a staging folder inside
  the data root: no member can land outside it (``..``, absolute paths, links out,
  devices), and an archive that tries is refused as a whole.
- Every memory and calibration in it must load before anything in the data root moves.
- A data root holding any file is refused unless ``force``; then each section the
  archive replaces is moved aside to ``<data_root>/.pre-restore-<time>/``, not deleted.
- Archives from ``tar czf x.tar.gz models datasets`` (the seeds' upgrade procedure), with
  or without one wrapping folder, are accepted too.

- Refused while an agent runs on the data root (it holds the root's lock, see
  ``agent.root_lock``): it holds the journal open and caches what it read. The restore
  holds the lock itself, so no agent starts on a data root half restored.
"""

from __future__ import annotations

import json
import shutil
import tarfile
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any

from agent.ops.backup import MANIFEST, SECTIONS, section_roots
from agent.ops.errors import OpsError
from agent.ops.snapshot import open_archive
from agent.root_lock import LOCK_NAME, lock_path, try_exclusive
from engine.errors import CorruptArtifact
from engine.store import ModelStore, read_memory

if TYPE_CHECKING:
    from agent.config import Settings


@dataclass
class RestoreReport:
    sections: list[str] = field(default_factory=list)
    files: int = 0
    rois: list[str] = field(default_factory=list)
    moved_aside: Path | None = None
    ignored: list[str] = field(default_factory=list)  # members outside the known sections
    warnings: list[str] = field(default_factory=list)
    manifest: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "sections": self.sections,
            "files": self.files,
            "rois": self.rois,
            "moved_aside": str(self.moved_aside) if self.moved_aside else None,
            "ignored": self.ignored,
            "warnings": self.warnings,
        }


def restore(settings: Settings, archive: Path, force: bool = False) -> RestoreReport:
    data_root = Path(settings.data_root)
    lock = try_exclusive(data_root)
    if lock is None:
        raise OpsError(
            f"an agent is running on the data root {data_root} (it holds {lock_path(data_root)}); "
            "stop it first (systemctl stop bdi-agent, docker compose -f deploy/compose.yaml stop "
            "agent), then restore. Nothing was changed"
        )
    with lock:
        return _restore(settings, data_root, archive, force)


def _restore(settings: Settings, data_root: Path, archive: Path, force: bool) -> RestoreReport:
    roots = section_roots(settings)
    present = _files_under([data_root, roots["models"]])
    if present and not force:
        raise OpsError(
            f"the data root {data_root} is not empty ({', '.join(present)}); restore over it "
            "with --force: what the archive replaces is moved to "
            f"{data_root}/.pre-restore-<time>/, nothing is deleted"
        )
    report = RestoreReport()
    with open_archive(Path(archive).expanduser()) as tar:
        members = _select(tar.getmembers(), report)
        if not any(m.name.split("/")[0] in SECTIONS for m in members):
            raise OpsError(f"{archive} holds none of {', '.join(SECTIONS)}: not a backup")
        data_root.mkdir(parents=True, exist_ok=True)
        staging = data_root / f".restore-{uuid.uuid4().hex[:8]}"
        try:
            try:
                tar.extractall(staging, members=members, filter="data")
            except tarfile.FilterError as exc:
                raise OpsError(
                    f"{archive} refused, nothing restored: unsafe member ({exc})"
                ) from None
            except (tarfile.TarError, EOFError, OSError) as exc:
                raise OpsError(f"{archive} could not be extracted ({exc})") from None
            _validate(staging, report)
            _put_in_place(staging, roots, data_root, report)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return report


def _files_under(roots: list[Path], limit: int = 3) -> list[str]:
    """Up to ``limit`` files found under the roots (empty folders do not count)."""
    found: list[str] = []
    for root in roots:
        if not root.is_dir():
            continue
        for path in root.rglob("*"):
            if path.name == LOCK_NAME and path.parent == root:
                continue  # the lock of the agents (and of this restore): not data
            if path.is_file() and str(path) not in found:
                found.append(str(path))
                if len(found) >= limit:
                    return found
    return found


def _select(members: list[tarfile.TarInfo], report: RestoreReport) -> list[tarfile.TarInfo]:
    """The members of known sections, renamed to ``<section>/...``."""
    names = [_normal(m.name) for m in members]
    tops = {n.split("/")[0] for n in names if n}
    # One wrapping folder (``tar czf b.tgz data/``): look inside it.
    if len(tops) == 1 and not tops & {*SECTIONS, MANIFEST}:
        prefix = f"{tops.pop()}/"
        names = [n.removeprefix(prefix) if n.startswith(prefix) else "" for n in names]
    selected = []
    for member, name in zip(members, names, strict=True):
        top = name.split("/")[0]
        wanted = (name == MANIFEST and member.isfile()) or (
            top in SECTIONS and (member.isfile() or member.isdir())
        )
        if wanted:
            selected.append(member.replace(name=name, deep=False))
        elif name:
            report.ignored.append(member.name)
    return selected


def _normal(name: str) -> str:
    # Only "./" is dropped here; ".." and absolute names are left for the data filter
    # to refuse.
    while name.startswith("./"):
        name = name[2:]
    return str(PurePosixPath(name)) if name not in ("", ".") else ""


def _validate(staging: Path, report: RestoreReport) -> None:
    """Every memory and calibration loads, before anything in the data root moves."""
    for path in sorted((staging / "models").rglob("*.npz")):
        try:
            read_memory(path)
        except CorruptArtifact as exc:
            raise OpsError(f"the archive's {path.relative_to(staging)}: {exc}") from None
    for path in sorted((staging / "models").rglob("*calib.json")):
        try:
            json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise OpsError(
                f"the archive's {path.relative_to(staging)} is unreadable ({exc})"
            ) from None
    report.rois = [
        f"{k.recipe_id}/{k.role_id}/{k.roi_id}" for k in ModelStore(staging / "models").roi_keys()
    ]
    _check_weights_record(staging, report)
    manifest = staging / MANIFEST
    if manifest.is_file():
        try:
            report.manifest = json.loads(manifest.read_text(encoding="utf-8"))
        except ValueError:
            report.manifest = None
    report.files = sum(1 for p in staging.rglob("*") if p.is_file() and p.name != MANIFEST)


def _check_weights_record(staging: Path, report: RestoreReport) -> None:
    record = staging / "weights" / "default.json"
    if not record.is_file():
        return
    try:
        name = Path(str(json.loads(record.read_text(encoding="utf-8"))["file"])).name
    except (OSError, ValueError, KeyError, TypeError):
        report.warnings.append("weights/default.json is unreadable: import the weights again")
        return
    if not (record.parent / name).is_file():
        report.warnings.append(
            f"weights/default.json names {name}, which the archive lacks: the agent will not "
            "load its model until the weights are imported again (bdi-agent weights import)"
        )


def _put_in_place(
    staging: Path, roots: dict[str, Path], data_root: Path, report: RestoreReport
) -> None:
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    aside = data_root / f".pre-restore-{stamp}"
    for section in SECTIONS:
        source, target = staging / section, roots[section]
        if not source.exists():
            continue  # not in the archive: the data root's own stays
        if target.exists():
            if _files_under([target], limit=1):
                aside.mkdir(parents=True, exist_ok=True)
                shutil.move(str(target), str(aside / section))
                report.moved_aside = aside
            else:
                shutil.rmtree(target)  # empty folders only
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(str(source), str(target))
        report.sections.append(section)
