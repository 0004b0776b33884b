"""Finishing one inbox file on the I/O thread: publish, write the result, move the files.

Also the small folder listings the inbox scans with.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog

from adapters.folders.layout import FileSig, InboxFile, Sidecar, ignored_name, is_image_name
from adapters.folders.output import Output
from adapters.folders.refits import refit_key
from agent.commands import Command, FitOk, Infer
from agent.errors import AgentError
from agent.replies import Reply
from agent.results import InferResult
from agent.services import Services

log = structlog.get_logger("adapters.folders")


@dataclass
class Job:
    """One attempt at a file: the command sent (None: refused before the bus), the file's
    signature and sidecar as read, and the outcome."""

    command: Command | None
    sig: FileSig
    sidecar: Sidecar
    speculative: bool
    reply: Reply | None = None
    body: dict[str, Any] | None = None  # the error body of a file refused before the bus


def write_outcome(file: InboxFile, job: Job, services: Services, output: Output) -> None:
    """Publish (infer), then write the result or error and move the image and sidecar.

    Publishing comes first: a crash before the files move makes the file be handled again
    with the same request id (at least once, like MQTT), never a result without a reply.
    """
    reply = job.reply
    body = _result_file_body(reply) if reply is not None else dict(job.body or {})
    heatmap = reply.result.heatmap_png if reply and isinstance(reply.result, InferResult) else None
    ok = "error" not in body
    if ok and isinstance(job.command, FitOk):
        output.mark_refit(refit_key(job.command))  # before the sample's file leaves
    dest = output.destination(file, ok)
    if file.kind == "infer" and is_image_name(file.path.name):
        published = reply or _failure_reply(file, body)
        services.publish(published, {"source": "folder", "path": str(dest)})
    sidecar = file.sidecar if job.sidecar.sig is not None else None
    share = sidecar is not None and _stem_shared(file.path)
    output.finish(file, job.sig, dest, body, heatmap, sidecar, share)
    fields = {"path": str(file.path), "dest": str(dest), "request_id": body["request_id"]}
    if ok:
        log.info("folder file handled", source="folder", kind=file.kind, **fields)
    else:
        log.warning("folder file failed", source="folder", error=body["error"], **fields)


def _result_file_body(reply: Reply) -> dict[str, Any]:
    """The ``.result.json`` body: the contract's result without the heatmap, which is
    written beside it as the PNG's own bytes."""
    ids = {"request_id": reply.command.request_id, "recipe_id": reply.command.recipe_id}
    if reply.error is not None or reply.result is None:
        return reply.to_dict()
    return {**reply.result.fields(), **ids}


def _stem_shared(path: Path) -> bool:
    """Another image with the same stem still waits beside ``path`` (it needs the sidecar)."""
    return any(
        p != path and p.stem == path.stem and is_image_name(p.name) for p in files(path.parent)
    )


def _failure_reply(file: InboxFile, body: dict[str, Any]) -> Reply:
    """A reply for an infer file refused before reaching the bus, so that whoever waits
    for that part's verdict (MQTT) hears of the failure too."""
    error = body["error"]
    command = Infer(
        request_id=body["request_id"],
        recipe_id=body["recipe_id"],
        source="folder",
        role_id=file.role_id,
        roi_id=file.roi_id,
        mm_per_px=0.0,  # never read: the reply is an error
        image=b"",
    )
    return Reply(command, error=AgentError(error["kind"], error["message"]), elapsed_ms=0.0)


def subdirs(folder: Path) -> list[Path]:
    try:
        with os.scandir(folder) as it:
            return sorted(Path(e.path) for e in it if e.is_dir() and not e.name.startswith("."))
    except OSError:
        return []


def files(folder: Path) -> list[Path]:
    """Every entry but folders: links, FIFOs and the like are listed too, so that a scan
    fails them instead of leaving them in the inbox for good."""
    try:
        with os.scandir(folder) as it:
            return [Path(e.path) for e in it if not e.is_dir(follow_symlinks=False)]
    except OSError:
        return []


def walk_inbox(root: Path, warned: set[Path]) -> list[list[Path]]:
    """The files of every ``<role>/<roi>/<kind>/`` folder, each list sorted by name. A file
    anywhere else is not ours to take: it is named in the log once (``warned``)."""
    out, misplaced = [], files(root)
    for role in subdirs(root):
        misplaced += files(role)
        for roi in subdirs(role):
            misplaced += files(roi)
            out += [sorted(files(kind)) for kind in subdirs(roi)]
    for path in misplaced:
        if path not in warned and not ignored_name(path.name):
            warned.add(path)
            log.warning(
                "file outside inbox/<role_id>/<roi_id>/{ok,ng,infer}/ ignored", path=str(path)
            )
    return out


def orphan_sidecars(folder_files: list[Path], older_than_s: float) -> list[Path]:
    """Sidecars that no image of their stem (complete or still ``.tmp``/``.part``) has
    claimed, unchanged for ``older_than_s``."""
    names = [p.name for p in folder_files]
    out = []
    for path in folder_files:
        if path.suffix.lower() != ".json" or ignored_name(path.name):
            continue
        stem = path.stem
        claimed = any(n != path.name and n.startswith(f"{stem}.") for n in names)
        claimed |= any(n.startswith(f".{stem}.") for n in names)
        try:
            age = time.time() - path.stat().st_mtime
        except OSError:
            continue
        if not claimed and age >= older_than_s:
            out.append(path)
    return out
