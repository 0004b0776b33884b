"""Shared fixtures: one random-initialised backbone per test session (no network)."""

from __future__ import annotations

import os

import pytest

# A test must never reach a model hub.
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from engine.features import BackboneConfig, FeatureExtractor


@pytest.fixture(scope="session")
def extractor() -> FeatureExtractor:
    """Real timm DINOv2 ViT-S/14, random weights, 224-px input (16x16 tokens) for speed."""
    fx = FeatureExtractor(BackboneConfig(weights="random", input_size=224, precision="fp32"))
    fx.load()
    return fx
