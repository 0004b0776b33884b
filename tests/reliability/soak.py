"""The 30-minute load run (``make soak``); not collected by ``make test`` (its file name
does not start with ``test_``). ``BDI_SOAK_S`` shortens or lengthens it."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import pytest

from tests.reliability.load import SOAK
from tests.reliability.test_load import hold


@pytest.mark.reliability("load", "30 min soak of mixed traffic (make soak)")
def test_half_an_hour_of_mixed_traffic_is_held(tmp_path: Path, record_property) -> None:
    duration = float(os.environ.get("BDI_SOAK_S", SOAK.duration_s))
    hold(dataclasses.replace(SOAK, duration_s=duration), tmp_path, record_property)
