"""The doctor's checks, in the order an operator would look."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from agent.ops.doctor.broker import check_broker
from agent.ops.doctor.check import FAIL, Check, Context
from agent.ops.doctor.checks import (
    check_data_root,
    check_device,
    check_http_port,
    check_legacy_names,
    check_weights,
)
from agent.ops.doctor.opcua import check_opcua
from agent.ops.doctor.rois import check_rois

if TYPE_CHECKING:
    from agent.config import Settings
    from engine.features import FeatureExtractor


def run_doctor(
    settings: Settings, timeout_s: float = 5.0, extractor: FeatureExtractor | None = None
) -> list[Check]:
    """Every check, in the order an operator would look. ``extractor`` (loaded) skips
    building the backbone again (tests share one)."""
    context = Context(settings, timeout_s, extractor)
    steps: list[Callable[[Context], list[Check]]] = [
        check_legacy_names,
        check_data_root,
        check_weights,
        check_device,
        check_broker,
        check_http_port,
        check_opcua,
        check_rois,
    ]
    checks: list[Check] = []
    for step in steps:
        try:
            checks.extend(step(context))
        except Exception as exc:  # a broken check must not hide the others' answers
            name = step.__name__.removeprefix("check_")
            checks.append(Check(name, FAIL, f"the check itself failed: {exc!r}"))
    return checks
