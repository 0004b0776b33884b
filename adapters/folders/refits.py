"""Debounced refits after ``ok/`` samples were stored: a burst gives one refit.

A ROI's refit is due ``fit_debounce_s`` after its last stored sample, and waits while any
``ok/`` file of that ROI is still on its way. It is the ``refit`` command (the memory rebuilt
from the ROI's whole stored OK dataset), published like a folder reply. A marker under
``processed/.state/refits`` (written before the sample's file leaves the inbox, removed
after the refit) makes a refit owed at a crash happen after the restart.

Runs on the scheduler thread, except ``_done`` (I/O thread).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import structlog

from adapters.folders.output import Output
from agent.commands import FitOk, Refit
from agent.replies import Reply
from agent.services import Services

if TYPE_CHECKING:
    from adapters.folders.hooks import Post, RunIo, Submit

log = structlog.get_logger("adapters.folders")

BUSY_RETRY_S = 5.0


@dataclass
class RefitDue:
    key: dict[str, Any]  # recipe_id, role_id, roi_id, model_key, shape
    due: float
    running: bool = False
    again: bool = False  # samples arrived while it ran


def refit_key(cmd: FitOk) -> dict[str, Any]:
    """What a refit needs from the sample's command (its sidecar shape, if any, wins)."""
    return {
        "recipe_id": cmd.recipe_id,
        "role_id": cmd.role_id,
        "roi_id": cmd.roi_id,
        "model_key": cmd.model_key,
        "shape": cmd.shape,
    }


class Refits:
    def __init__(
        self,
        inbox_root: Path,
        debounce_s: float,
        services: Services,
        submit: Submit,
        output: Output,
        post: Post,
        run_io: RunIo,
        roi_busy: Callable[[str, str], bool],
    ) -> None:
        self.inbox_root = inbox_root
        self.debounce_s = debounce_s
        self.services = services
        self.submit = submit
        self.output = output
        self.post = post
        self.run_io = run_io
        self.roi_busy = roi_busy  # (role_id, roi_id) -> an ok/ file of it is on its way
        self.due: dict[str, RefitDue] = {}

    def schedule(self, key: dict[str, Any], now: float) -> None:
        name = _name(key)
        due = self.due.get(name)
        if due is None:
            self.due[name] = RefitDue(key, now + self.debounce_s)
            return
        due.key, due.due = key, now + self.debounce_s
        due.again |= due.running

    def tick(self, now: float, stopping: bool) -> float:
        """Start the refits that are due; returns when the next one is."""
        for name, due in list(self.due.items()):
            if due.running or now < due.due or stopping:
                continue
            if self.roi_busy(due.key["role_id"], due.key["roi_id"]):
                due.due = now + self.debounce_s
                continue
            key = due.key
            command = Refit(
                request_id=str(uuid.uuid4()),
                recipe_id=key["recipe_id"],
                source="folder",
                role_id=key["role_id"],
                roi_id=key["roi_id"],
                model_key=key.get("model_key"),
                shape=key.get("shape"),
            )
            due.running, due.again = True, False
            self.submit(command).add_done_callback(partial(self._replied, name))
        return min((d.due for d in self.due.values() if not d.running), default=now + 3600)

    def _replied(self, name: str, future: Future[Reply]) -> None:
        reply = future.result()  # on the engine thread: only hand it over
        self.post(lambda t: self._on_reply(name, reply, t))

    def _on_reply(self, name: str, reply: Reply, now: float) -> None:
        due = self.due[name]
        due.running = False
        if reply.error is not None and reply.error.kind == "busy":
            due.due = now + BUSY_RETRY_S
            return
        settled = not due.again and not self.roi_busy(due.key["role_id"], due.key["roi_id"])
        if settled:
            del self.due[name]
        key = due.key
        self.run_io(lambda: self._done(key, reply, settled))

    def _done(self, key: dict[str, Any], reply: Reply, settled: bool) -> None:
        path = str(self.inbox_root / key["role_id"] / key["roi_id"] / "ok")
        self.services.publish(reply, {"source": "folder", "path": path})
        if reply.ok:
            log.info("folder refit", source="folder", path=path, **_fields(reply))
        else:
            log.error("folder refit failed", source="folder", path=path, error=reply.to_dict())
        if settled:
            self.output.clear_refit(key)  # a failure is not retried until new samples come


def _name(key: dict[str, Any]) -> str:
    return "\0".join(str(key.get(k)) for k in ("recipe_id", "role_id", "roi_id", "model_key"))


def _fields(reply: Reply) -> dict[str, Any]:
    body = reply.body or {}
    names = ("model_version", "n_samples", "coreset_size", "elapsed_ms")
    return {"request_id": reply.command.request_id, **{k: body.get(k) for k in names}}
