"""Dataset roots owned by someone else (the GUI, seed 000): refit when ``ok/`` changes.

    <root>/<role_id>/<roi_id>/ok/<image> + <stem>.json   (mm_per_px, source, timestamp_utc, ...)
    <root>/<role_id>/<roi_id>/ng/<image> + <stem>.json

These files are only ever read. A change under a ROI's ``ok/`` or ``ng/`` starts (or pushes
back) a ``fit_debounce_s`` timer; when it runs out the ROI's current images are compared
with what was last handled (names, sizes, mtimes, kept under ``processed/.state``): a
changed OK set refits the memory from exactly those images (``fit_images``) and, when the
ROI has NG images, recalibrates by self-scoring both sets (``calibrate_ng`` with images);
a changed NG set alone only recalibrates. Both replies are published with
``"source": "dataset"``. Reading and submitting happen on the adapter's I/O thread.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import structlog

from adapters.folders.dataset_files import (
    LABELS,
    Snapshot,
    dataset_scale,
    listing_sig,
    snapshot,
    subdirs,
)
from adapters.folders.hooks import Post, RunIo, Submit
from adapters.folders.layout import FileChanged, ignored_name
from adapters.folders.output import Output
from agent.commands import CalibrateNg, FitImages
from agent.config import FolderSettings
from agent.errors import AgentError
from agent.replies import Reply
from agent.services import Services
from engine.keys import RoiKey

log = structlog.get_logger("adapters.folders")

RETRY_S = 5.0


@dataclass
class RoiWatch:
    root: Path
    role_id: str
    roi_id: str
    due: float | None = None
    busy: bool = False
    again: bool = False

    @property
    def folder(self) -> Path:
        return self.root / self.role_id / self.roi_id

    @property
    def name(self) -> str:
        return str(self.folder)


@dataclass
class _Run:
    """One pass over a ROI, carried from the fit to the calibration."""

    roi: RoiWatch
    key: RoiKey
    snap: Snapshot
    scale: float = 0.0
    state: dict[str, Any] = field(default_factory=dict)


class DatasetRoots:
    def __init__(
        self,
        roots: list[Path],
        settings: FolderSettings,
        services: Services,
        submit: Submit,
        output: Output,
        post: Post,
        run_io: RunIo,
    ) -> None:
        self.roots = [root.absolute() for root in roots]
        self.debounce_s = settings.fit_debounce_s
        self.services = services
        self.submit = submit
        self.output = output
        self.post = post
        self.run_io = run_io
        self.rois: dict[str, RoiWatch] = {}

    # -- scheduler thread -------------------------------------------------------------

    def owns(self, path: Path) -> bool:
        return any(path.is_relative_to(root) for root in self.roots)

    def on_fs(self, path: Path, now: float) -> None:
        for root in self.roots:
            if not path.is_relative_to(root):
                continue
            parts = path.relative_to(root).parts
            if not parts or any(ignored_name(p) for p in parts[:3]):
                return
            if len(parts) >= 3 and parts[2] not in LABELS:
                return
            if len(parts) == 1:  # a whole role folder appeared or went
                for roi in subdirs(path):
                    self._touch(root, parts[0], roi.name, now)
            else:
                self._touch(root, parts[0], parts[1], now)
            return

    def _touch(self, root: Path, role_id: str, roi_id: str, now: float) -> None:
        roi = self.rois.setdefault(str(root / role_id / roi_id), RoiWatch(root, role_id, roi_id))
        if roi.busy:
            roi.again = True
        else:
            roi.due = now + self.debounce_s  # every change pushes the refit back

    def scan(self, now: float) -> None:
        """Catch what changed while we were down or whose events were lost."""
        for root in self.roots:
            for role in subdirs(root):
                for roi_dir in subdirs(role):
                    if not any((roi_dir / label).is_dir() for label in LABELS):
                        continue
                    name = str(roi_dir)
                    roi = self.rois.get(name)
                    if roi is not None and (roi.busy or roi.due is not None):
                        continue
                    state = self.output.dataset_state(name)
                    listing = {label: listing_sig(roi_dir / label) for label in LABELS}
                    if listing["ok"] == state.get("ok_sig") and listing["ng"] == state.get(
                        "ng_sig"
                    ):
                        continue
                    self._touch(root, role.name, roi_dir.name, now)

    def tick(self, now: float) -> float:
        wake = now + 3600
        for roi in self.rois.values():
            if roi.due is None or roi.busy:
                continue
            if roi.due > now:
                wake = min(wake, roi.due)
                continue
            roi.due, roi.busy, roi.again = None, True, False
            self.run_io(partial(self._guarded, roi, self._start))
        return wake

    def _done(self, roi: RoiWatch, now: float, retry: bool) -> None:
        roi.busy = False
        if retry or roi.again:
            roi.due = now + (RETRY_S if retry else self.debounce_s)
        roi.again = False

    # -- I/O thread -------------------------------------------------------------------

    def _guarded(self, roi: RoiWatch, step: Callable[[RoiWatch], None]) -> None:
        try:
            step(roi)
        except Exception:
            log.exception("dataset folder pass failed", source="dataset", path=roi.name)
            self.post(lambda t: self._done(roi, t, retry=True))

    def _start(self, roi: RoiWatch) -> None:
        try:
            snap = snapshot(roi.folder)
        except (FileChanged, FileNotFoundError):
            self.post(lambda t: self._done(roi, t, retry=True))  # still being copied
            return
        key = RoiKey.of(roi.role_id, roi.roi_id)
        run = _Run(roi, key, snap, state=self.output.dataset_state(roi.name))
        missing = self.services.models.find_memory(key) is None
        fit = snap.ok_sig != run.state.get("ok_sig") or missing
        calibrate = bool(snap.ng) and (fit or snap.ng_sig != run.state.get("ng_sig"))
        if fit and not snap.ok:
            log.warning("dataset ROI has no OK images; memory left as is", path=roi.name)
            fit = calibrate = False
        if not (fit or calibrate):
            self._end(run)
            return
        try:
            run.scale = self._scale(run)
        except AgentError as error:
            refused = self._fit_command(run) if fit else self._calibrate_command(run)
            self._publish(run, Reply(refused, error=error))
            self._end(run)
            return
        if not fit:
            self._calibrate(run)
            return
        self.submit(self._fit_command(run)).add_done_callback(
            lambda f: self.run_io(lambda: self._guarded(roi, lambda _: self._fitted(run, f)))
        )

    def _fit_command(self, run: _Run) -> FitImages:
        return FitImages(
            request_id=str(uuid.uuid4()),
            source="dataset",
            role_id=run.key.role_id,
            roi_id=run.key.roi_id,
            mm_per_px=run.scale or 1.0,  # 1.0 only in a refusal, which carries no scale
            images=tuple(image.data for image in run.snap.ok),
            names=tuple(image.path.name for image in run.snap.ok),
        )

    def _scale(self, run: _Run) -> float:
        defaults = self.services.defaults_for(run.key)
        fallback = defaults.mm_per_px if defaults else None
        return dataset_scale(run.snap, run.roi.folder, fallback, run.key.role_id, run.key.roi_id)

    def _fitted(self, run: _Run, future: Any) -> None:
        reply: Reply = future.result()
        if _busy(reply):
            self.post(lambda t: self._done(run.roi, t, retry=True))
            return
        self._publish(run, reply)
        if reply.ok and run.snap.ng:
            self._calibrate(run)
            return
        self._end(run)

    def _calibrate_command(self, run: _Run) -> CalibrateNg:
        return CalibrateNg(
            request_id=str(uuid.uuid4()),
            source="dataset",
            role_id=run.key.role_id,
            roi_id=run.key.roi_id,
            mm_per_px=run.scale or None,
            ok_images=tuple(image.data for image in run.snap.ok),
            ng_images=tuple(image.data for image in run.snap.ng),
        )

    def _calibrate(self, run: _Run) -> None:
        self.submit(self._calibrate_command(run)).add_done_callback(
            lambda f: self.run_io(
                lambda: self._guarded(run.roi, lambda _: self._calibrated(run, f))
            )
        )

    def _calibrated(self, run: _Run, future: Any) -> None:
        reply: Reply = future.result()
        if _busy(reply):
            self.post(lambda t: self._done(run.roi, t, retry=True))
            return
        self._publish(run, reply)
        self._end(run)

    def _publish(self, run: _Run, reply: Reply) -> None:
        self.services.publish(reply, {"source": "dataset", "path": run.roi.name})
        body = reply.to_dict()
        fields = {"path": run.roi.name, "command": reply.command.name}
        if reply.ok:
            kept = ("model_version", "n_samples", "threshold", "request_id")
            log.info("dataset folder", source="dataset", **fields, **_pick(body, kept))
        else:
            log.error("dataset folder refused", source="dataset", **fields, error=body["error"])

    def _end(self, run: _Run) -> None:
        """Remember what was handled (even a refusal: the same files would be refused again;
        the next change tries anew)."""
        state = {"ok_sig": run.snap.ok_sig, "ng_sig": run.snap.ng_sig}
        if state != {k: run.state.get(k) for k in state}:
            self.output.save_dataset_state(run.roi.name, state)
        self.post(lambda t: self._done(run.roi, t, retry=False))


def _busy(reply: Reply) -> bool:
    return reply.error is not None and reply.error.kind == "busy"


def _pick(body: dict[str, Any], names: tuple[str, ...]) -> dict[str, Any]:
    return {name: body[name] for name in names if name in body}
