"""What a file in the inbox is, and the command it stands for (contract section 6).

    inbox/<role_id>/<roi_id>/{ok,ng,infer}/<image>   (+ optional sidecar <stem>.json)

Pure functions over paths and bytes: no threads, no engine.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent.commands import Command
from agent.config import RoiDefaults
from agent.errors import AgentError, bad_request
from agent.parsing import parse_command, recipe_id_of, request_id_of
from engine.datasets import IMAGE_SUFFIXES
from engine.errors import EngineError
from engine.keys import RoiKey, is_text

COMMAND_OF_KIND = {"ok": "fit_ok", "ng": "add_ng", "infer": "infer"}
SIDECAR_FIELDS = ("mm_per_px", "shape", "recipe_id", "request_id")
# Folder request ids are UUIDs derived from the file, so a file handled again after a crash
# carries the same id: the idempotency journal and result consumers see a duplicate.
REQUEST_NAMESPACE = uuid.UUID("6f1d2c8e-3b7a-4d51-9a0e-b2c4f1e7d9a3")

# (size, mtime_ns, inode): a file is stable while this does not change.
FileSig = tuple[int, int, int]


def ignored_name(name: str) -> bool:
    """Names a writer is still working on (the camera convention) or hidden files."""
    lower = name.lower()
    return name.startswith(".") or lower.endswith((".tmp", ".part"))


def is_image_name(name: str) -> bool:
    return Path(name).suffix.lower() in IMAGE_SUFFIXES


@dataclass(frozen=True)
class InboxFile:
    """An image (or a stray file) at ``inbox/<role>/<roi>/<kind>/<name>``."""

    path: Path
    role_id: str
    roi_id: str
    kind: str  # ok | ng | infer, or the unknown folder name (the file then fails)

    @property
    def sidecar(self) -> Path:
        return self.path.with_suffix(".json")

    @property
    def known_kind(self) -> bool:
        return self.kind in COMMAND_OF_KIND


def classify(inbox: Path, path: Path) -> InboxFile | str | None:
    """An ``InboxFile``; ``"sidecar"`` for a ``.json`` beside images; None for anything
    that is not ours to take (hidden, partial, folders, or not four levels deep)."""
    try:
        parts = path.relative_to(inbox).parts
    except ValueError:
        return None
    if len(parts) != 4 or any(ignored_name(part) for part in parts):
        return None
    if path.suffix.lower() == ".json":
        return "sidecar"
    return InboxFile(path, parts[0], parts[1], parts[2])


def stat_sig(path: Path, follow: bool = True) -> FileSig | None:
    """``follow=False``: the signature of a symbolic link itself, not of its target."""
    try:
        st = os.stat(path, follow_symlinks=follow)
    except OSError:
        return None
    return (st.st_size, st.st_mtime_ns, st.st_ino)


def irregular(path: Path) -> str | None:
    """What ``path`` is when it is neither a regular file nor a folder (None then, or when
    it is gone). Such an entry is never read: a symbolic link may point anywhere
    (``/proc/self/status`` grows as it is read, so it never settles), a FIFO blocks."""
    try:
        mode = os.lstat(path).st_mode
    except OSError:
        return None
    if stat.S_ISREG(mode) or stat.S_ISDIR(mode):
        return None
    if stat.S_ISLNK(mode):
        return "a symbolic link"
    if stat.S_ISFIFO(mode):
        return "a FIFO"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "a device file"


class FileChanged(Exception):
    """The file changed while it was read: it is not complete yet."""


def read_stable(path: Path) -> tuple[bytes, FileSig]:
    """The bytes and the signature they belong to (stat, read, stat must agree)."""
    before = stat_sig(path)
    if before is None:
        raise FileNotFoundError(path)
    data = path.read_bytes()
    after = stat_sig(path)
    if after != before or len(data) != before[0]:
        raise FileChanged(path)
    return data, before


class SidecarPending(Exception):
    """The sidecar is missing (and needed) or still being written: ask again later."""


@dataclass(frozen=True)
class Sidecar:
    fields: dict[str, Any]
    sig: FileSig | None  # None: no sidecar file


def read_sidecar(path: Path, settle_s: float) -> Sidecar:
    """The sidecar's known fields. A sidecar that is not a JSON object is refused, unless
    it changed within ``settle_s`` (then it may still be being written)."""
    sig = stat_sig(path)
    if sig is None:
        return Sidecar({}, None)
    name = ascii_name(path)
    try:
        data = json.loads(path.read_bytes())
    except (OSError, ValueError, RecursionError) as exc:  # RecursionError: nested too deep
        if time.time() - sig[1] / 1e9 < settle_s:
            raise SidecarPending(path) from None
        reason = "nested too deep" if isinstance(exc, RecursionError) else str(exc)[:200]
        raise bad_request(f"sidecar {name} is not valid JSON: {reason}") from None
    if not isinstance(data, dict):
        raise bad_request(f"sidecar {name} must hold a JSON object")
    return Sidecar({k: data[k] for k in SIDECAR_FIELDS if k in data}, sig)


def ascii_name(path: Path) -> str:
    """A file name fit for a message: one not valid UTF-8 on disk comes back with its
    odd bytes escaped, so the error body can still be written as UTF-8 JSON."""
    return ascii(path.name)[1:-1] if not is_text(path.name) else path.name


def file_request_id(file: InboxFile, inbox: Path, data: bytes, sig: FileSig) -> str:
    """Deterministic per file version: path, size, mtime and content."""
    rel = file.path.relative_to(inbox).as_posix()
    digest = hashlib.sha256(data).hexdigest()
    return str(uuid.uuid5(REQUEST_NAMESPACE, f"{rel}|{sig[0]}|{sig[1]}|{digest}"))


def build_command(
    file: InboxFile,
    inbox: Path,
    data: bytes,
    sig: FileSig,
    sidecar: Sidecar,
    defaults_for: Callable[[RoiKey], RoiDefaults | None],
    sidecar_missing_is_final: bool,
) -> Command:
    """The command for one inbox file: its payload is the file's ROI and bytes plus the
    sidecar's fields, parsed by the parser every adapter shares (which takes a missing
    ``mm_per_px`` from the ROI's defaults). Raises ``AgentError`` for a file that can
    never succeed, ``SidecarPending`` when ``mm_per_px`` may still come with a late
    sidecar."""
    payload: dict[str, Any] = {"role_id": file.role_id, "roi_id": file.roi_id, **sidecar.fields}
    # The sidecar's request id when it can be echoed, else the file's own (deterministic).
    fallback = file_request_id(file, inbox, data, sig)
    payload["request_id"] = request_id_of(sidecar.fields) or fallback
    key = roi_defaults_key(file, sidecar)  # None: the parser refuses the bad id
    if (
        key is not None
        and payload.get("mm_per_px") in (None, "")
        and not _has_default_scale(key, defaults_for)
    ):
        if sidecar.sig is None and not sidecar_missing_is_final:
            raise SidecarPending(file.sidecar)
        # Said here rather than by the parser: which sidecar was looked for.
        where = (
            "its sidecar" if sidecar.sig is not None else f"no sidecar {ascii_name(file.sidecar)}"
        )
        raise bad_request(
            f"mm_per_px is required: {where} gives none and configs/rois.yaml has no "
            f"default for {file.role_id}/{file.roi_id}"
        )
    if file.kind == "infer":
        payload["image"] = data
    else:
        payload["images"] = [data]
        payload["memory_fit"] = False  # ok/: store now, one debounced refit later
    return parse_command(COMMAND_OF_KIND[file.kind], payload, "folder", defaults=defaults_for)


def _has_default_scale(key: RoiKey, defaults_for: Callable[[RoiKey], RoiDefaults | None]) -> bool:
    """Whether ``configs/rois.yaml`` gives the ROI a scale."""
    defaults = defaults_for(key)
    return defaults is not None and defaults.mm_per_px is not None


class Refused(Exception):
    """A file that can never succeed: ``body`` is its error body; ``sidecar`` is the one to
    move to failed/ with it (a refused sidecar included)."""

    def __init__(self, body: dict[str, Any], sidecar: Sidecar) -> None:
        super().__init__(body["error"]["message"])
        self.body = body
        self.sidecar = sidecar


def prepare_command(
    file: InboxFile,
    inbox: Path,
    data: bytes,
    sig: FileSig,
    defaults_for: Callable[[RoiKey], RoiDefaults | None],
    settle_s: float,
    sidecar_missing_is_final: bool,
) -> tuple[Command, Sidecar]:
    """The command for a complete file and the sidecar it used. Raises ``Refused`` or
    ``SidecarPending``."""
    sidecar = Sidecar({}, None)
    try:
        if not file.known_kind:
            raise bad_request(
                f"folder {file.kind!r} is not one of ok/, ng/, infer/ "
                "(inbox/<role_id>/<roi_id>/<kind>/<file>)"
            )
        if not is_image_name(file.path.name):
            raise bad_request(f"{ascii_name(file.path)} is not a PNG/JPEG/BMP/TIFF image")
        sidecar = read_sidecar(file.sidecar, settle_s)
        command = build_command(
            file, inbox, data, sig, sidecar, defaults_for, sidecar_missing_is_final
        )
    except AgentError as error:
        ids = failure_ids(sidecar.fields, file_request_id(file, inbox, data, sig))
        moved = Sidecar(sidecar.fields, sidecar.sig or stat_sig(file.sidecar))
        raise Refused(error_body(error, ids), moved) from None
    return command, sidecar


def roi_defaults_key(file: InboxFile, sidecar: Sidecar) -> RoiKey | None:
    """The key under which ``configs/rois.yaml`` defaults are looked up."""
    try:
        return RoiKey.of(file.role_id, file.roi_id, sidecar.fields.get("recipe_id"))
    except (EngineError, TypeError):
        return None  # parse_command names the bad field


def failure_ids(sidecar_fields: dict[str, Any], fallback_request_id: str) -> dict[str, str]:
    """request_id and recipe_id for an error body when no command could be built."""
    request_id = request_id_of(sidecar_fields) or fallback_request_id
    return {"request_id": request_id, "recipe_id": recipe_id_of(sidecar_fields)}


def error_body(error: AgentError, ids: dict[str, str]) -> dict[str, Any]:
    return {"error": error.body(), **ids}
