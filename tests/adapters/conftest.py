"""Adapter test fixtures: a real mosquitto broker, agents wired to it."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from adapters.mqtt.adapter import MqttAdapter, create
from agent.bootstrap import Agent
from engine.features import FeatureExtractor
from tests.adapters.mqtt_support import Broker, wait_connected
from tests.adapters.test_folders_support import FolderAgents, folder_agents, small_extractor


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Broker]:
    server = Broker(tmp_path_factory.mktemp("mosquitto"))
    server.start()
    yield server
    server.stop()


@pytest.fixture
def mqtt_agent(
    make_agent: Callable[..., Agent],
) -> Iterator[Callable[..., tuple[Agent, MqttAdapter]]]:
    adapters: list[MqttAdapter] = []

    def make(
        port: int,
        agent_id: str = "line1",
        wait: bool = True,
        data_root: Path | None = None,
        agent_settings: dict[str, Any] | None = None,
        **mqtt: Any,
    ) -> tuple[Agent, MqttAdapter]:
        settings_mqtt = {"enabled": True, "host": "127.0.0.1", "port": port, **mqtt}
        agent = make_agent(
            data_root=data_root, agent_id=agent_id, mqtt=settings_mqtt, **(agent_settings or {})
        )
        adapter = create(agent.settings, agent)
        adapter.start()
        adapters.append(adapter)
        if wait:
            wait_connected(agent)
        return agent, adapter

    yield make
    for adapter in adapters:
        adapter.stop()


@pytest.fixture(scope="session")
def extractor112() -> FeatureExtractor:
    """The folder tests' own small backbone (8x8 tokens), loaded once."""
    return small_extractor()


@pytest.fixture
def agents(tmp_path: Path, extractor112: FeatureExtractor) -> Iterator[FolderAgents]:
    yield from folder_agents(tmp_path, extractor112)
