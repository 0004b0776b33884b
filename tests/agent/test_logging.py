"""One log of JSON lines: the agent's own events, libraries' logging and Python warnings."""

from __future__ import annotations

import io
import json
import logging
import socket
import warnings

import pytest
import structlog

from agent.logging import configure_logging
from engine.errors import ModelUnavailable
from engine.features import BackboneConfig, FeatureExtractor


def test_library_records_and_warnings_are_json_lines() -> None:
    stream = io.StringIO()
    configure_logging("INFO", stream)
    try:
        structlog.get_logger("agent").info("started", agent_id="a1")
        logging.getLogger("huggingface_hub").warning("Retrying in %ss [Retry %d/5]", 1, 1)
        warnings.warn("a library's notice", UserWarning, stacklevel=1)
    finally:
        logging.captureWarnings(False)
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert [line["event"] for line in lines][:2] == ["started", "Retrying in 1s [Retry 1/5]"]
    assert lines[1]["logger"] == "huggingface_hub" and lines[1]["level"] == "warning"
    assert lines[2]["logger"] == "py.warnings" and "a library's notice" in lines[2]["event"]


def test_an_unreachable_hub_is_tried_once_and_refused_at_once(
    tmp_path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No cache and a hub endpoint that refuses connections (a closed loopback port):
    refused with the reason in one short try, not after half a minute of retries."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # closed again when the block ends
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", False)
    monkeypatch.setattr("huggingface_hub.constants.ENDPOINT", f"http://127.0.0.1:{port}")
    fx = FeatureExtractor(BackboneConfig(weights="hub", runtime="torch", precision="fp32"))
    with pytest.raises(ModelUnavailable, match=rf"hub is unreachable \(127.0.0.1:{port}"):
        fx.load()
