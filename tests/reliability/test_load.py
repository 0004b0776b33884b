"""Mixed traffic for a minute (the 30-minute run is ``make soak``): every request answered
once, p95 steady, no growth of memory, file descriptors or threads."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.reliability.load import SHORT, LoadPlan, run_load


def hold(plan: LoadPlan, workdir: Path, record_property: Callable[[str, Any], None]) -> None:
    """Run ``plan``, record its figures for the report, print them, assert its verdict."""
    figures = run_load(plan, workdir)
    verdict = figures.pop("verdict")
    samples = figures.pop("samples")
    for name, value in figures.items():
        record_property(name, value)
    record_property("verdict", verdict)
    print(json.dumps({**figures, "verdict": verdict, "samples": samples}))
    assert all(verdict.values()), {name: ok for name, ok in verdict.items() if not ok}


@pytest.mark.reliability("load", "60 s mixed traffic (MQTT, folders, HTTP, refits)")
def test_a_minute_of_mixed_traffic_is_held(tmp_path: Path, record_property) -> None:
    hold(SHORT, tmp_path, record_property)
