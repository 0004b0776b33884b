"""Where handled inbox files go, written so that a crash at any point loses nothing and
duplicates nothing.

    processed/<yyyy-mm-dd>/<role>/<roi>/<kind>/<stem><ext>   the image (moved, never copied)
                                              <stem>.json          its sidecar (moved with it)
                                              <stem>.result.json   the reply body
                                              <stem>.heatmap.png   infer only
    failed/<yyyy-mm-dd>/<role>/<roi>/<kind>/...                    same, with <stem>.error.json

Order: an *intent* (every write and move of one file, with the source's signature) is
written atomically first, then applied, then removed. The image leaves the inbox last.
A crash before the intent leaves the file in the inbox (handled again, same request id);
a crash after it is finished by ``replay()`` at the next start. The date is UTC.
"""

from __future__ import annotations

import base64
import contextlib
import errno
import glob
import hashlib
import json
import os
import shutil
import stat
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import structlog

from adapters.folders.layout import FileSig, InboxFile, stat_sig
from engine.atomic import atomic_write, atomic_write_bytes, atomic_write_json, fsync_dir

log = structlog.get_logger("adapters.folders")

OUTPUT_SUFFIXES = (".json", ".result.json", ".error.json", ".heatmap.png")


def utc_day() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%d")


def _digest(text: str) -> str:
    return hashlib.sha1(text.encode("utf-8")).hexdigest()


def free_stem(folder: Path, stem: str, suffix: str) -> str:
    """``stem``, else ``stem_1``, ``stem_2``...: a clash never overwrites anything."""
    for attempt in range(100_000):
        name = stem if attempt == 0 else f"{stem}_{attempt}"
        taken = [folder / f"{name}{suffix}"] + [folder / f"{name}{s}" for s in OUTPUT_SUFFIXES]
        if not any(path.exists() for path in taken):
            return name
    raise RuntimeError(f"no free name for {stem} in {folder}")


class Output:
    def __init__(self, data_root: Path) -> None:
        self.processed = data_root / "processed"
        self.failed = data_root / "failed"
        # Our own bookkeeping, hidden inside processed/ (same disk, nobody watches it).
        self.state = self.processed / ".state"
        self.intents = self.state / "intents"
        self.refits = self.state / "refits"
        self.datasets = self.state / "datasets"

    def prepare(self) -> None:
        for folder in (self.processed, self.failed, self.intents, self.refits, self.datasets):
            folder.mkdir(parents=True, exist_ok=True)

    def destination(self, file: InboxFile, ok: bool) -> Path:
        """The image's new path (the stem is free now; ``finish`` must follow at once)."""
        base = self.processed if ok else self.failed
        folder = base / utc_day() / file.role_id / file.roi_id / file.kind
        return folder / f"{free_stem(folder, file.path.stem, file.path.suffix)}{file.path.suffix}"

    def finish(
        self,
        file: InboxFile,
        sig: FileSig,
        dest: Path,
        body: dict[str, Any],
        heatmap: bytes | None,
        sidecar: Path | None,
        share_sidecar: bool,
    ) -> None:
        """Write the result (or error) beside ``dest``, then move the image (and sidecar).
        ``share_sidecar``: another image of the same stem still needs the sidecar: copy it."""
        stem = dest.name[: -len(dest.suffix)] if dest.suffix else dest.name
        result_name = f"{stem}.result.json" if "error" not in body else f"{stem}.error.json"
        payload = json.dumps(body, indent=2, sort_keys=True, ensure_ascii=False).encode() + b"\n"
        writes = [[str(dest.parent / result_name), _b64(payload)]]
        if heatmap is not None:
            writes.append([str(dest.parent / f"{stem}.heatmap.png"), _b64(heatmap)])
        moves: list[list[Any]] = []
        copies: list[list[str]] = []
        side_sig = stat_sig(sidecar, follow=False) if sidecar is not None else None
        if sidecar is not None and side_sig is not None:
            side_dest = str(dest.parent / f"{stem}.json")
            if share_sidecar:
                copies.append([str(sidecar), side_dest])
            else:
                moves.append([str(sidecar), side_dest, list(side_sig)])
        moves.append([str(file.path), str(dest), list(sig)])  # the image leaves the inbox last
        intent = {"writes": writes, "copies": copies, "moves": moves}
        path = self.intents / f"{_digest(str(file.path))}.json"
        atomic_write_json(path, intent)
        _apply(intent)
        path.unlink(missing_ok=True)

    def replay(self) -> tuple[int, dict[Path, FileSig]]:
        """Finish what a crash interrupted. Returns how many intents were applied, and the
        inbox files of those that could not be (not to be handled a second time)."""
        done, stuck = 0, {}
        for partial in self.intents.glob(".*.tmp"):  # an intent a crash cut short: never used
            partial.unlink(missing_ok=True)
        for path in sorted(self.intents.glob("*.json")):
            try:
                intent = json.loads(path.read_text(encoding="utf-8"))
                _drop_partial_writes(intent)
                _apply(intent)
            except (OSError, ValueError, TypeError, KeyError) as exc:
                log.error("folder intent could not be replayed", intent=str(path), error=str(exc))
                with contextlib.suppress(Exception):
                    source, _, sig = intent["moves"][-1]
                    stuck[Path(source)] = tuple(sig)
                continue
            path.unlink(missing_ok=True)
            done += 1
        return done, stuck

    # -- refits owed after ok/ samples were stored (survive a restart) -----------------

    def mark_refit(self, key: dict[str, Any]) -> None:
        path = self.refits / f"{_digest(json.dumps(_ids(key), sort_keys=True))}.json"
        if _read_json(path) != key:
            atomic_write_json(path, key)

    def clear_refit(self, key: dict[str, Any]) -> None:
        (self.refits / f"{_digest(json.dumps(_ids(key), sort_keys=True))}.json").unlink(
            missing_ok=True
        )

    def pending_refits(self) -> list[dict[str, Any]]:
        found = (_read_json(path) for path in sorted(self.refits.glob("*.json")))
        return [key for key in found if isinstance(key, dict)]

    # -- what the dataset-root watcher last handled, per ROI ----------------------------

    def dataset_state(self, name: str) -> dict[str, Any]:
        data = _read_json(self.datasets / f"{_digest(name)}.json")
        return data if isinstance(data, dict) else {}

    def save_dataset_state(self, name: str, state: dict[str, Any]) -> None:
        atomic_write_json(self.datasets / f"{_digest(name)}.json", {"name": name, **state})


def _ids(key: dict[str, Any]) -> dict[str, Any]:
    return {k: key.get(k) for k in ("recipe_id", "role_id", "roi_id", "model_key")}


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _drop_partial_writes(intent: dict[str, Any]) -> None:
    """Our own temp files (``.<name>.<random>.tmp``) that a crash left beside a result."""
    for target, _ in intent["writes"]:
        path = Path(target)
        for partial in path.parent.glob(f".{glob.escape(path.name)}.*.tmp"):
            partial.unlink(missing_ok=True)


def _apply(intent: dict[str, Any]) -> None:
    """Idempotent: every step checks whether it already happened."""
    folders: set[Path] = set()
    for target, data in intent["writes"]:
        if not Path(target).exists():
            atomic_write_bytes(Path(target), base64.b64decode(data))
    for source, target in intent["copies"]:
        if Path(source).exists() and not Path(target).exists():
            _copy_atomic(Path(source), Path(target))
    for source, target, sig in intent["moves"]:
        _move_once(Path(source), Path(target), tuple(sig))
        folders.update((Path(source).parent, Path(target).parent))
    for folder in folders:
        fsync_dir(folder)


def _move_once(source: Path, target: Path, sig: tuple[int, ...]) -> None:
    """Move ``source`` (only the version with signature ``sig``) to ``target``, which
    must not exist: a move never overwrites here.

    A hard link then an unlink, not a rename: inotify holds a rename out of the watched
    tree for ~0.5 s waiting for its other half, and every later inbox event waits behind it.
    """
    # Signatures of the entry itself (a symbolic link is moved as a link, never followed).
    current = stat_sig(source, follow=False)
    if current is None or tuple(current) != sig:
        return  # moved already, or a newer file of the same name: not ours to move
    if os.path.lexists(target):
        if _same_entry(source, target) or target.lstat().st_size == sig[0]:
            source.unlink()  # the link (or a cross-device copy) was made before a crash
            return
        raise FileExistsError(f"{target} exists; refusing to overwrite it")
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(source, target, follow_symlinks=False)
    except FileExistsError:
        raise
    except OSError as exc:
        if exc.errno == errno.EXDEV:  # inbox on another file system (network share)
            _copy_entry(source, target)
        else:  # a file system without hard links
            os.rename(source, target)
            return
    source.unlink()


def _same_entry(a: Path, b: Path) -> bool:
    sa, sb = a.lstat(), b.lstat()
    return (sa.st_dev, sa.st_ino) == (sb.st_dev, sb.st_ino)


def _copy_entry(source: Path, target: Path) -> None:
    """A copy across file systems; a link or a FIFO is made anew, never read."""
    if source.is_symlink():
        os.symlink(os.readlink(source), target)
    elif stat.S_ISFIFO(source.lstat().st_mode):
        os.mkfifo(target)
    else:
        _copy_atomic(source, target)


def _copy_atomic(source: Path, target: Path) -> None:
    def write(handle: Any) -> None:
        with open(source, "rb") as src:
            shutil.copyfileobj(src, handle)

    atomic_write(target, write)
    shutil.copystat(source, target)
