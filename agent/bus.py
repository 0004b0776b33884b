"""The message bus: the one entry point every adapter hands commands to."""

from __future__ import annotations

import threading
import uuid
from concurrent.futures import Future
from typing import Any

from agent import __version__
from agent.commands import Command, Health
from agent.delivery import Delivery
from agent.errors import AgentError
from agent.events import Events
from agent.metrics import Metrics
from agent.recent import RecentVerdicts
from agent.replies import Reply
from agent.results import JsonResult
from agent.services import Services
from agent.stats import Stats
from agent.worker import Worker
from engine.backbone.weights import MODEL_NAME


class Bus:
    def __init__(
        self,
        services: Services,
        worker: Worker,
        stats: Stats,
        metrics: Metrics,
        delivery: Delivery,
        events: Events,
        recent: RecentVerdicts,
    ) -> None:
        self.services = services
        self.worker = worker
        self.stats = stats
        self.metrics = metrics
        self.delivery = delivery  # the thread that hands results and events over
        self.events = events  # the core's events (contract section 9)
        self.recent = recent  # the last verdicts with their pictures (GET /recent)
        self._mqtt_state = "disabled"  # the MQTT adapter keeps this current
        self._announced: tuple[str, str | None] | None = None  # last health event's status
        self._health_lock = threading.Lock()
        self.spool_size = 0  # replies waiting on disk for the broker (MQTT adapter)
        self.mqtt_rejected = 0  # messages no broker would take: dropped or set aside
        self.boot_id = uuid.uuid4().hex  # tells consumers this agent run from the last

    def submit(self, cmd: Command) -> Future[Reply]:
        """Queue a command; ``health`` is answered at once, without queueing."""
        if isinstance(cmd, Health):
            future: Future[Reply] = Future()
            health = self.health()
            error = None
            if health["status"] in ("loading", "error"):
                error = AgentError("busy", health.get("reason", "the model is not loaded"))
            future.set_result(Reply(cmd, result=JsonResult(values=health), error=error))
            return future
        return self.worker.submit(cmd)

    @property
    def mqtt_state(self) -> str:
        return self._mqtt_state

    @mqtt_state.setter
    def mqtt_state(self, state: str) -> None:
        self._mqtt_state = state
        self.health_changed()

    def health_changed(self) -> None:
        """Emit the ``health`` event when the status (or its reason) changed since the
        last one: the model loaded or failed, the broker went away or came back."""
        with self._health_lock:
            health = self.health()
            status = (health["status"], health.get("reason"))
            if status == self._announced:
                return
            self._announced = status
            self.events.emit("health", health)

    def execute(self, cmd: Command, timeout: float | None = None) -> Reply:
        return self.submit(cmd).result(timeout)

    def health(self) -> dict[str, Any]:
        services = self.services
        extractor = services.core.extractor
        ready = services.model_state == "ready"
        status = {"ready": "ok", "loading": "loading"}.get(services.model_state, "error")
        if status == "ok" and self.mqtt_state == "disconnected":
            status = "degraded"
        body: dict[str, Any] = {
            "status": status,
            "device": extractor.device if ready else services.settings.device,
            "model": MODEL_NAME,
            "weights": extractor.weights.label if ready else services.settings.backbone_weights,
            "version": __version__,
            "mqtt": self.mqtt_state,
            "queue_size": self.worker.queue_size,
            "runtime": services.settings.runtime,
            "precision": services.settings.precision,
        }
        if ready:
            choice = extractor.choice
            body["runtime"], body["precision"] = choice.runtime, choice.precision
            body["runtime_reason"] = choice.reason
        reason = services.model_unavailable()
        if reason is not None:
            body["reason"] = reason
        elif status == "degraded":
            body["reason"] = "MQTT broker unreachable; replies are spooled to disk"
        return body

    def training(self) -> dict[str, Any]:
        """Seed 001's training status, for every adapter: a fit, refit or calibration
        running now or waiting in the queue (a folder's debounced refit included)."""
        current, queued = self.worker.training()
        return {
            "status": "running" if current or queued else "idle",
            "running": current,
            "queued": queued,
            "last_train_ts": self.services.last_fit_ts,
        }

    def stats_body(self) -> dict[str, Any]:
        return {
            **self.stats.snapshot(),
            "queue_size": self.worker.queue_size,
            "mqtt": self.mqtt_state,
            "spool_size": self.spool_size,
            "mqtt_rejected": self.mqtt_rejected,
            "device": self.services.core.extractor.device
            if self.services.model_state == "ready"
            else self.services.settings.device,
            "boot_id": self.boot_id,
        }
