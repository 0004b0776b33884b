"""The doctor's check model and its report (text for people, JSON for machines).

``bdi-agent doctor``: the seeds' troubleshooting tables as checks that run.

Each check prints ``ok``/``warn``/``fail`` with what it saw and, when not ok, the fix.
The exit code is non-zero when any check fails; ``--json`` is for machines. The checks
read, probe and connect, but change nothing (the data-root probe file is removed).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from agent.config import Settings
    from engine.features import FeatureExtractor

OK, WARN, FAIL = "ok", "warn", "fail"
RANK = {OK: 0, WARN: 1, FAIL: 2}


@dataclass(frozen=True)
class Check:
    name: str
    status: str  # ok | warn | fail
    message: str
    fix: str = ""


@dataclass
class Context:
    """What the checks share: the settings, and the backbone once the weights check
    has loaded it (the ROI checks compare each memory's weights with it)."""

    settings: Settings
    timeout_s: float = 5.0
    extractor: FeatureExtractor | None = None


def failed(checks: list[Check]) -> bool:
    return any(c.status == FAIL for c in checks)


def render_text(checks: list[Check]) -> str:
    width = max((len(c.name) for c in checks), default=0)
    lines = []
    for check in checks:
        lines.append(f"{check.status:<4}  {check.name:<{width}}  {check.message}")
        if check.fix and check.status != OK:
            lines.append(f"{'':<4}  {'':<{width}}  fix: {check.fix}")
    counts = {s: sum(c.status == s for c in checks) for s in (FAIL, WARN, OK)}
    lines.append(f"doctor: {counts[FAIL]} fail, {counts[WARN]} warn, {counts[OK]} ok")
    return "\n".join(lines)


def render_json(checks: list[Check]) -> str:
    body: dict[str, Any] = {
        "ok": not failed(checks),
        "summary": {s: sum(c.status == s for c in checks) for s in (OK, WARN, FAIL)},
        "checks": [asdict(c) for c in checks],
    }
    return json.dumps(body, indent=2)


def worst(statuses: list[str]) -> str:
    return max(statuses, key=RANK.__getitem__, default=OK)
