"""Outcomes of the tests marked ``reliability`` as JSON lines, for the reliability report.

A test opts in with ``@pytest.mark.reliability("fault", "broker SIGKILL during traffic")``
(family: ``load``, ``fault``, ``bad_input`` or ``security``) and adds its figures with
pytest's own ``record_property``: ``tried`` (inputs or requests), ``failures``, ``lost``
(samples, models or verdicts lost: must be 0), ``detail`` (the outcome in words), and for
load runs ``requests``, ``rate_per_s``, ``p50_ms``, ``p95_ms``, ``rss_drift_mb``...

Lines are written only when ``BDI_RELIABILITY_OUT`` names a file (the report sets it), so a
plain ``make test`` writes nothing.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from typing import Any

import pytest

OUT_ENV = "BDI_RELIABILITY_OUT"
FAMILIES = ("load", "fault", "bad_input", "security")


def outcome_record(item: pytest.Item, report: pytest.TestReport) -> dict[str, Any] | None:
    marker = item.get_closest_marker("reliability")
    if marker is None:
        return None
    # One line per test: its call, or the setup that failed or skipped it.
    if report.when != "call" and not (report.when == "setup" and not report.passed):
        return None
    family, name = marker.args
    if family not in FAMILIES:
        raise ValueError(f"reliability family {family!r} is not one of {FAMILIES}")
    record: dict[str, Any] = {
        "family": family,
        "name": name,
        "test": item.nodeid,
        "outcome": report.outcome,
        "duration_s": round(report.duration, 1),
        "ts": time.time(),
    }
    if report.skipped and isinstance(report.longrepr, tuple):
        record["reason"] = str(report.longrepr[2]).removeprefix("Skipped: ")
    elif report.failed:
        record["reason"] = report.longreprtext.strip().splitlines()[-1][:300]
    record.update(dict(report.user_properties))
    return record


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    outcome = yield
    path = os.environ.get(OUT_ENV)
    if not path:
        return
    record = outcome_record(item, outcome.get_result())
    if record is not None:
        with open(path, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(record, default=str) + "\n")
