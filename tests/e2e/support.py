"""Running ``make run`` / ``make demo`` style front doors in a subprocess."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

from agent.config import LEGACY_NAMES

ROOT = Path(__file__).resolve().parents[2]
STARTED = re.compile(r"started (\w+) \(pid (\d+)\)")


def clean_env(**extra: str) -> dict[str, str]:
    """This environment without any agent setting, plus ``extra``."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not (k.startswith(("BDI_", "BRAKEDISC_")) or k in LEGACY_NAMES)
    }
    return {**env, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1", **extra}


class FrontDoor:
    """A ``python -m <module>`` process whose output lines are collected as they come."""

    def __init__(self, module: str, args: list[str], env: dict[str, str]) -> None:
        self.lines: list[str] = []
        self._cond = threading.Condition()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", module, *args],
            cwd=ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            with self._cond:
                self.lines.append(line.rstrip("\n"))
                self._cond.notify_all()

    def wait_line(self, predicate: Callable[[str], bool], timeout: float) -> str:
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                found = next((line for line in self.lines if predicate(line)), None)
                if found is not None:
                    return found
                remaining = deadline - time.monotonic()
                if remaining <= 0 or self.proc.poll() is not None:
                    raise AssertionError(f"no such line; output so far:\n{self.output()}")
                self._cond.wait(min(remaining, 0.5))

    def output(self) -> str:
        with self._cond:
            return "\n".join(self.lines[-80:])

    def started(self) -> dict[str, int]:
        """The children it announced, by name."""
        with self._cond:
            found = (STARTED.search(line) for line in self.lines)
            return {m.group(1): int(m.group(2)) for m in found if m}

    def interrupt(self, timeout: float = 90) -> int:
        """Ctrl-C, then its exit status."""
        self.proc.send_signal(signal.SIGINT)
        try:
            return self.proc.wait(timeout)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


def alive(pid: int) -> bool:
    """Running (a zombie waiting for its parent counts as gone)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    return "\nState:\tZ" not in status


def get_json(url: str) -> tuple[int, dict[str, Any]]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def wait_json(
    url: str, predicate: Callable[[int, dict[str, Any]], bool], timeout: float
) -> tuple[int, dict[str, Any]]:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = get_json(url)
            if predicate(*last):
                return last
        except (OSError, ValueError):
            pass
        time.sleep(0.3)
    raise AssertionError(f"{url}: last answer {last}")
