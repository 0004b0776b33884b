"""The message bus: the one entry point every adapter hands commands to."""

from __future__ import annotations

from concurrent.futures import Future
from typing import Any

from agent import __version__
from agent.commands import Command, Health
from agent.errors import AgentError
from agent.replies import Reply
from agent.services import Services
from agent.stats import Stats
from agent.worker import Worker
from engine.features import MODEL_NAME


class Bus:
    def __init__(self, services: Services, worker: Worker, stats: Stats) -> None:
        self.services = services
        self.worker = worker
        self.stats = stats
        self.mqtt_state = "disabled"  # the MQTT adapter keeps this current

    def submit(self, cmd: Command) -> Future[Reply]:
        """Queue a command; ``health`` is answered at once, without queueing."""
        if isinstance(cmd, Health):
            future: Future[Reply] = Future()
            health = self.health()
            error = None
            if health["status"] in ("loading", "error"):
                error = AgentError("busy", health.get("reason", "the model is not loaded"))
            future.set_result(Reply(cmd, body=health, error=error))
            return future
        return self.worker.submit(cmd)

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
        }
        reason = services.model_unavailable()
        if reason is not None:
            body["reason"] = reason
        elif status == "degraded":
            body["reason"] = "MQTT broker unreachable; replies are spooled to disk"
        return body

    def stats_body(self) -> dict[str, Any]:
        return {
            **self.stats.snapshot(),
            "queue_size": self.worker.queue_size,
            "mqtt": self.mqtt_state,
        }
