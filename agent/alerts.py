"""Consecutive anomalies per ROI (contract section 9's ``alert`` event): one alert when a
run of anomalous verdicts reaches ``alert_after``, and ``cleared`` when an OK verdict ends
a run that alerted. An uncalibrated verdict (``is_anomaly`` null) neither counts nor ends
a run. Memory: one small entry per ROI currently in a run."""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any

RoiIds = tuple[str, str, str]  # recipe_id, role_id, roi_id


@dataclass
class _Run:
    since: str
    count: int = 0
    alerted: bool = False


class AlertTracker:
    def __init__(self, alert_after: int) -> None:
        self.alert_after = alert_after
        self._runs: dict[RoiIds, _Run] = {}
        self._lock = threading.Lock()

    def consecutive(self, roi: RoiIds) -> int:
        """Anomalous verdicts in a row on this ROI now."""
        with self._lock:
            run = self._runs.get(roi)
            return run.count if run else 0

    def update(
        self, roi: RoiIds, is_anomaly: bool | None, request_id: str, ts: str
    ) -> dict[str, Any] | None:
        """The ``alert`` body to emit after this verdict, if any."""
        if is_anomaly is None:
            return None
        recipe_id, role_id, roi_id = roi
        ids = {"recipe_id": recipe_id, "role_id": role_id, "roi_id": roi_id}
        with self._lock:
            run = self._runs.get(roi)
            if not is_anomaly:
                self._runs.pop(roi, None)
                if run is None or not run.alerted:
                    return None
                kind = "cleared"
            else:
                if run is None:
                    run = self._runs[roi] = _Run(since=ts)
                run.count += 1
                if run.alerted or run.count < self.alert_after:
                    return None
                run.alerted = True
                kind = "consecutive_anomalies"
            return {
                "kind": kind,
                "count": run.count,
                "since": run.since,
                "last_request_id": request_id,
                **ids,
            }
