"""What the core did, said once as events (contract section 9), whatever adapter asked.

Runs on the delivery thread (it is a reply observer, and ROI changes are posted there):
every ``infer`` outcome becomes a ``verdict`` (and, through the alert tracker, an
``alert``) and joins the recent verdicts with its pictures; a fit, calibration or dataset
change becomes the ROI's ``state``. The ``health`` event is the bus's (``health_changed``).
"""

from __future__ import annotations

from typing import Any

import structlog

from agent.alerts import AlertTracker
from agent.commands import Infer, InferBatch, RoiCommand
from agent.delivery import Delivery
from agent.events import Events
from agent.recent import RecentVerdict, RecentVerdicts, thumbnail_png
from agent.replies import Reply
from agent.results import InferBatchResult, InferResult
from agent.services import Services
from engine.errors import EngineError
from engine.keys import RoiKey
from engine.memory import utc_now_iso
from engine.preprocess import decode_image

log = structlog.get_logger("agent.events")

# Commands after which a ROI's state may differ (fits and calibrations say so themselves).
DATASET_CHANGES = ("dataset_clear", "dataset_delete")


class Announcer:
    def __init__(
        self,
        services: Services,
        events: Events,
        recent: RecentVerdicts,
        delivery: Delivery,
    ) -> None:
        self.services = services
        self.events = events
        self.recent = recent
        self.delivery = delivery
        self.alerts = AlertTracker(services.settings.alert_consecutive)

    def attach(self) -> None:
        self.services.reply_observers.append(self.reply)
        self.services.roi_listeners.append(self.roi_changed)

    # -- ROI state ---------------------------------------------------------------------

    def roi_changed(self, key: RoiKey) -> None:
        """Called where the change happened (the worker): the state is read and emitted
        on the delivery thread, after the reply of the command that changed it."""
        self.delivery.post(lambda: self._emit_state(key), droppable=True)

    def _emit_state(self, key: RoiKey) -> None:
        try:
            state = self.services.roi_state_body(key)
        except Exception:
            log.exception("ROI state unreadable", role_id=key.role_id, roi_id=key.roi_id)
            return
        self.events.emit("state", state)

    # -- verdicts ----------------------------------------------------------------------

    def reply(self, reply: Reply) -> None:
        cmd, result = reply.command, reply.result
        if not reply.ok:
            return
        if isinstance(cmd, Infer) and isinstance(result, InferResult):
            self._verdict(cmd, cmd.request_id, result)
        elif isinstance(cmd, InferBatch) and isinstance(result, InferBatchResult):
            for item, outcome in zip(cmd.items, result.items, strict=True):
                if outcome.result is not None:
                    self._verdict(item, outcome.request_id, outcome.result)
        elif cmd.name in DATASET_CHANGES and isinstance(cmd, RoiCommand):
            self._emit_state(RoiKey.of(cmd.role_id, cmd.roi_id, cmd.recipe_id, cmd.model_key))

    def _verdict(self, cmd: Infer, request_id: str, result: InferResult) -> None:
        ts = utc_now_iso()
        verdict = {
            "recipe_id": cmd.recipe_id,
            "role_id": cmd.role_id,
            "roi_id": cmd.roi_id,
            "score": result.score,
            "threshold": result.threshold,
            "is_anomaly": result.is_anomaly,
            "n_regions": len(result.regions),
            "max_area_mm2": result.max_area_mm2,
            "request_id": request_id,
            "source": cmd.source,
            "ts": ts,
            "model_version": result.model_version,
        }
        event = self.events.emit("verdict", verdict)
        self._keep_pictures(event.seq, event.body, cmd, result)
        roi = (cmd.recipe_id, cmd.role_id, cmd.roi_id)
        alert = self.alerts.update(roi, result.is_anomaly, request_id, ts)
        if alert is not None:
            self.events.emit("alert", alert)

    def _keep_pictures(self, seq: int, verdict: Any, cmd: Infer, result: InferResult) -> None:
        if self.recent.max_items == 0:
            return
        try:
            image = thumbnail_png(decode_image(cmd.image, self.services.limits))
        except (EngineError, ValueError):  # it decoded for the infer; never fail an event
            log.warning("recent verdict image unavailable", seq=seq)
            return
        self.recent.add(RecentVerdict(seq, verdict, image, result.heatmap_png))
