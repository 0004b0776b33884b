"""Shared fixtures: one random-initialised backbone per test session (no network)."""

from __future__ import annotations

import os

import pytest

# A test must never reach a model hub.
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from agent.bootstrap import Agent, bootstrap, build_engine
from agent.config import Settings
from agent.demo.discs import encode_png, make_set
from engine.features import BackboneConfig, FeatureExtractor
from tests.adapters.mqtt_support import Broker

SIZE = 224


@pytest.fixture(scope="session")
def extractor() -> FeatureExtractor:
    """Real timm DINOv2 ViT-S/14, random weights, 224-px input (16x16 tokens) for speed."""
    fx = FeatureExtractor(
        BackboneConfig(weights="random", input_size=224, runtime="torch", precision="fp32")
    )
    fx.load()
    return fx


def agent_settings(data_root: Path, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "data_root": data_root,
        "backbone_weights": "random",
        "input_size": SIZE,
        "precision": "fp32",
        "runtime": "torch",
        "coreset_min": 256,
        "rois_file": data_root / "rois.yaml",
        "mqtt": {"enabled": False},
        "folders": {"enabled": False},
        "http": {"enabled": False},
    }
    values.update(overrides)
    return Settings(**values)


@pytest.fixture
def make_agent(tmp_path: Path, extractor: FeatureExtractor) -> Iterator[Callable[..., Agent]]:
    started: list[Agent] = []

    def make(data_root: Path | None = None, **overrides: Any) -> Agent:
        settings = agent_settings(data_root or tmp_path / "data", **overrides)
        core = build_engine(settings)
        core.extractor = extractor
        agent = bootstrap(settings, core=core)
        agent.start(load_model=False)
        started.append(agent)
        return agent

    yield make
    for agent in started:
        agent.stop(timeout=30)


@pytest.fixture
def fresh_broker(tmp_path: Path) -> Iterator[Broker]:
    """A real mosquitto of this test's own, on a free port (stopped by its pid)."""
    server = Broker(tmp_path / "mosquitto")
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def ok_pngs() -> list[bytes]:
    return [encode_png(d.image) for d in make_set(seed=11, n_ok=12, size=SIZE)]


@pytest.fixture(scope="session")
def test_discs():
    return make_set(seed=12, n_ok=4, n_per_defect=2, size=SIZE, kinds=("rust", "crack"))


# Reliability outcomes as JSON lines for `make reliability-report` (tests/reliability).
from tests.reliability.recording import pytest_runtest_makereport  # noqa: E402, F401
