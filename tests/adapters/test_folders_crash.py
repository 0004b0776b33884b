"""SIGKILL of ``bdi-agent run`` while folder files are in flight: after a restart every
file is handled, none twice (neither in processed/ nor in the OK dataset)."""

from __future__ import annotations

import json
import queue
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from engine.datasets import DatasetStore
from engine.keys import RoiKey
from engine.store import ModelStore
from tests.adapters.test_folders_support import (
    MM,
    discs,
    drop,
    failed,
    inbox_files,
    processed,
    read_json,
    wait_for,
)
from tests.support import ROOT, cli_env


class AgentProcess:
    """``python -m agent run`` with its JSON log lines read on a thread."""

    def __init__(self, env: dict[str, str]) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "agent", "run"],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
            cwd=ROOT,
        )
        self.lines: queue.Queue[dict[str, Any]] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            try:
                self.lines.put(json.loads(line))
            except ValueError:
                continue

    def wait_event(self, match: Any, timeout: float) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                event = self.lines.get(timeout=0.2)
            except queue.Empty:
                continue
            if match(event):
                return event
        raise AssertionError("the agent never logged the awaited event")

    def stop(self, sig: int = signal.SIGTERM) -> None:
        self.proc.send_signal(sig)
        self.proc.wait(timeout=60)


@pytest.mark.reliability("fault", "agent SIGKILL during folder moves, then restart")
def test_files_in_flight_at_sigkill_are_handled_once_after_restart(
    tmp_path: Path, record_property
) -> None:
    data = tmp_path / "data"
    env = cli_env(
        data,
        BDI_INPUT_SIZE="112",
        BDI_PRECISION="fp32",
        BDI_RUNTIME="torch",
        BDI_CORESET_MIN="256",
        BDI_FOLDERS__ENABLED="true",
        BDI_FOLDERS__SETTLE_MS="100",
        BDI_FOLDERS__FIT_DEBOUNCE_S="0.5",
        BDI_FOLDERS__RESCAN_S="2",
    )
    inbox = data / "inbox" / "r" / "i"
    pngs = discs(seed=61, n_ok=22)
    side = {"mm_per_px": MM}

    agent = AgentProcess(env)
    agent.wait_event(lambda e: e["event"] == "model loaded", 180)
    for i in range(6):  # a first memory, so that the infers below have one
        drop(inbox / "ok", f"base{i}.png", pngs[i], side)
    agent.wait_event(lambda e: e["event"] == "folder refit", 120)
    for i in range(8):
        drop(inbox / "ok", f"ok{i}.png", pngs[6 + i], side)
        drop(inbox / "infer", f"part{i}.png", pngs[14 + i], side)
    agent.wait_event(lambda e: e["event"] == "command" and e.get("source") == "folder", 60)
    agent.stop(signal.SIGKILL)  # mid-burst: stored, journaled, half-moved, still queued...
    assert inbox_files(data), "the kill came too late to interrupt anything"

    key = RoiKey.of("r", "i")

    def refitted() -> bool:  # the refit may also have been done before the kill
        memory = ModelStore(data / "models").load_memory(key)
        return memory is not None and memory.info.n_samples == 14

    agent = AgentProcess(env)
    try:
        wait_for(lambda: not inbox_files(data) and refitted(), 240, "all files and the refit")
        time.sleep(0.5)  # the last intent is removed just after its file leaves the inbox
    finally:
        agent.stop()

    names = sorted(p.name for p in processed(data, "*.png") if ".heatmap" not in p.name)
    expected = [f"base{i}.png" for i in range(6)]
    expected += [f"ok{i}.png" for i in range(8)] + [f"part{i}.png" for i in range(8)]
    record_property("tried", len(expected))
    record_property("lost", len(set(expected) - set(names)))
    record_property("detail", f"{len(expected)} files, each handled once after the restart")
    assert names == sorted(expected)  # each exactly once: no "_1" copies
    for image in processed(data, "*.png"):
        if ".heatmap" in image.name:
            continue
        result = read_json(image.with_name(f"{image.stem}.result.json"))
        assert "error" not in result
        if image.name.startswith("part"):
            assert image.with_name(f"{image.stem}.heatmap.png").is_file()
    assert not failed(data, "*")
    assert not list((data / "processed" / ".state" / "intents").glob("*.json"))
    assert len(DatasetStore(data / "datasets").list(key, "ok")) == 14  # none stored twice
    assert refitted()
