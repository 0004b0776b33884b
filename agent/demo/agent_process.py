"""The demo's agent process: its own data root and configuration, and a readable log.

The demo writes ``<data root>/agent.yaml`` and ``rois.yaml`` at each start and points
``BDI_CONFIG`` there. No ``BDI_*`` (or legacy) variable of the caller's environment is
passed on: a plant's broker, API key or data root must never leak into the demo.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path
from typing import IO, Any

import yaml

from agent.config import LEGACY_NAMES
from agent.demo.line import AGENT_ID, MM_PER_PX, ROI_ID, ROLE_ID, SIZE, roi_shape, truth_of
from agent.demo.procs import Child, Supervisor

# Agent log events worth a line in the demo's terminal; the rest is in agent.log.
SHOWN_EVENTS = {
    "starting",
    "model loaded",
    "mqtt connected",
    "http adapter listening",
    "folder adapter started",
    "stopping",
    "stopped",
}
QUIET_FIELDS = {"event", "level", "ts", "version", "legacy_names_used"}


def prepare_data_root(root: Path, mqtt: bool) -> None:
    root.mkdir(parents=True, exist_ok=True)
    # Keeps the demo's data out of git without touching the repository's .gitignore.
    (root / ".gitignore").write_text("*\n", encoding="utf-8")
    settings: dict[str, Any] = {
        "agent_id": AGENT_ID,
        "data_root": str(root),
        "rois_file": str(root / "rois.yaml"),
        "backbone_weights": "random",
        "input_size": SIZE,
        "mqtt": {"enabled": mqtt},
        "folders": {"enabled": True},
        "http": {"enabled": True, "host": "127.0.0.1"},
    }
    header = (
        "# Written by make demo at each start: the settings of the demo's agent.\n"
        "# The broker and HTTP ports are chosen at start and passed in BDI_MQTT__PORT and\n"
        "# BDI_HTTP__PORT. Every setting: configs/agent.yaml.\n"
    )
    _write_yaml(root / "agent.yaml", header, settings)
    rois = {
        "rois": [
            {"role_id": ROLE_ID, "roi_id": ROI_ID, "mm_per_px": MM_PER_PX, "shape": roi_shape()}
        ]
    }
    header = "# Per-ROI defaults of the demo: what the camera's folder drops are measured in.\n"
    _write_yaml(root / "rois.yaml", header, rois)


def _write_yaml(path: Path, header: str, data: dict[str, Any]) -> None:
    text = header + yaml.safe_dump(data, sort_keys=False)
    path.write_text(text, encoding="utf-8")


def agent_env(root: Path, mqtt_host: str, mqtt_port: int | None, http_port: int) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not _agent_setting(k)}
    env.update(
        BDI_CONFIG=str(root / "agent.yaml"),
        BDI_HTTP__PORT=str(http_port),
        HF_HUB_OFFLINE="1",  # random weights: nothing to fetch, ever
        PYTHONUNBUFFERED="1",
    )
    if mqtt_port is not None:
        env.update(BDI_MQTT__HOST=mqtt_host, BDI_MQTT__PORT=str(mqtt_port))
    return env


def _agent_setting(name: str) -> bool:
    return name.startswith(("BDI_", "BRAKEDISC_")) or name in LEGACY_NAMES


def start_agent(supervisor: Supervisor, env: dict[str, str], root: Path, view: LogView) -> Child:
    """``python -m agent run``; its log goes to ``<root>/agent.log`` and, through
    ``view``, condensed to the terminal."""
    child = supervisor.spawn(
        "agent",
        [sys.executable, "-m", "agent", "run"],
        env=env,
        stdout=subprocess.PIPE,
        grace_s=60,  # it finishes the command in flight
    )
    assert child.proc.stdout is not None
    log = (root / "agent.log").open("ab")
    pump = threading.Thread(
        target=_pump, args=(child.proc.stdout, log, view), name="agent-log", daemon=True
    )
    pump.start()
    return child


def _pump(stream: IO[bytes], log: IO[bytes], view: LogView) -> None:
    with log:
        for raw in stream:
            log.write(raw)
            log.flush()
            line = view.line(raw.decode(errors="replace").rstrip())
            if line is not None:
                print(f"[agent] {line}", flush=True)


class LogView:
    """The terminal's version of the agent's log: start-up, warnings and errors, and,
    when there is no PLC to print them, the verdicts of the camera's files."""

    def __init__(self, verbose: bool = False, folder_verdicts: bool = False) -> None:
        self.verbose = verbose
        self.folder_verdicts = folder_verdicts
        self._scores: dict[str, str] = {}  # request id -> verdict, until its file is done

    def line(self, line: str) -> str | None:
        """What to print for one agent log line, or None to leave it to agent.log."""
        if self.verbose:
            return line
        try:
            entry = json.loads(line)
        except ValueError:
            return line  # a traceback or a library's warning: show it as it is
        if not isinstance(entry, dict):
            return line
        event = str(entry.get("event", ""))
        if self.folder_verdicts and event in ("command", "folder file handled"):
            return self._verdict(event, entry)
        if event not in SHOWN_EVENTS and entry.get("level") not in ("warning", "error"):
            return None
        fields = " ".join(f"{k}={v}" for k, v in entry.items() if k not in QUIET_FIELDS)
        text = f"{event}  {fields}".rstrip()
        return text if len(text) <= 160 else text[:157] + "..."

    def _verdict(self, event: str, entry: dict[str, Any]) -> str | None:
        request_id = str(entry.get("request_id"))
        if event == "command":
            if entry.get("command") == "infer" and entry.get("source") == "folder":
                anomaly = entry.get("is_anomaly")
                verdict = "ANOMALY" if anomaly else "OK" if anomaly is not None else "no verdict"
                self._scores[request_id] = f"score {entry.get('score', 0):.3f}  {verdict}"
            return None
        scored = self._scores.pop(request_id, None)
        if scored is None:
            return None
        name = Path(str(entry.get("path", ""))).name
        return f"{name:<34} {scored:<22} truth {truth_of(name) or '?'}"
