"""Which adapters ``run`` starts: each enabled one whose module is present."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

import structlog

from agent.config import Settings

if TYPE_CHECKING:
    from agent.bootstrap import Adapter, Agent

log = structlog.get_logger("agent")


def build_adapters(settings: Settings, agent: Agent) -> list[Adapter]:
    adapters: list[Adapter] = []
    for name, enabled in (
        ("mqtt", settings.mqtt.enabled),
        ("folders", settings.folders.enabled),
        ("http", settings.http.enabled),
        ("opcua", settings.opcua.enabled),
    ):
        if not enabled:
            log.info("adapter disabled", adapter=name)
            continue
        try:
            module = importlib.import_module(f"adapters.{name}.adapter")
        except ModuleNotFoundError:
            log.warning("adapter not available in this build", adapter=name)
            continue
        adapters.append(module.create(settings, agent))
    return adapters
