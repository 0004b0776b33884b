"""What the fault tests share: an agent subprocess over HTTP, a tmpfs mount, and a checker
that says whether a data root is whole after a fault.

The checker is the pass criterion of every fault test: after a SIGKILL, a full disk or a
racing refit, every stored sample must be complete (image + metadata whose sha256 is the
image's), every memory and calibration must load, and the journal must open.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import signal
import sqlite3
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

import engine.atomic
from engine.datasets import IMAGE_SUFFIXES
from engine.errors import CorruptArtifact
from engine.store import read_memory
from tests.adapters.mqtt_support import free_port
from tests.e2e.support import FrontDoor
from tests.support import cli_env

MM = 0.2
ROI = {"role_id": "Inspection", "roi_id": "Inspection_1"}
FORM = {**ROI, "mm_per_px": str(MM)}
# Temp files of engine.atomic (``.atomic-XXXX.tmp``): a SIGKILL between mkstemp and the
# rename leaves one. Every reader skips names starting with "." (datasets, the model
# listing, backups), so they are never taken for data; they only hold disk space.
TEMP_PREFIX = engine.atomic.TEMP_PREFIX


# -- the integrity checker ----------------------------------------------------------------


@dataclass
class Integrity:
    samples: int = 0
    memories: int = 0
    calibrations: int = 0
    temp_files: list[Path] = field(default_factory=list)  # harmless leftovers, counted
    orphan_meta: list[Path] = field(default_factory=list)  # JSON claimed, image never came
    problems: list[str] = field(default_factory=list)
    sha_by_label: dict[str, Counter[str]] = field(default_factory=dict)

    @property
    def clean(self) -> bool:
        return not self.problems

    def shas(self, label: str) -> Counter[str]:
        return self.sha_by_label.get(label, Counter())


def check_data_root(root: Path) -> Integrity:
    """Walk ``root`` as an agent left it; every stored thing must be whole."""
    out = Integrity()
    datasets = root / "datasets"
    if datasets.is_dir():
        _check_datasets(datasets, out)
    models = root / "models"
    if models.is_dir():
        _check_models(models, out)
    for path in root.rglob(f"{TEMP_PREFIX}*"):
        out.temp_files.append(path)
    journal = root / "journal" / "requests.sqlite"
    if journal.exists():
        try:
            with contextlib.closing(sqlite3.connect(f"file:{journal}?mode=ro", uri=True)) as db:
                db.execute("SELECT count(*) FROM results").fetchone()
        except sqlite3.Error as exc:
            out.problems.append(f"journal {journal} does not open: {exc}")
    return out


def _check_datasets(datasets: Path, out: Integrity) -> None:
    for folder in sorted(p for p in datasets.glob("*/*/*/*") if p.is_dir()):
        label = folder.name
        for path in sorted(folder.iterdir()):
            if path.name.startswith("."):
                continue
            if path.suffix == ".json":
                if not any(path.with_suffix(s).exists() for s in IMAGE_SUFFIXES):
                    out.orphan_meta.append(path)
                continue
            if path.suffix.lower() not in IMAGE_SUFFIXES:
                out.problems.append(f"unexpected file in a dataset: {path}")
                continue
            meta_path = path.with_suffix(".json")
            try:
                meta = json.loads(meta_path.read_text(encoding="utf-8"))
            except (OSError, ValueError) as exc:
                out.problems.append(f"sample {path} has no readable metadata: {exc}")
                continue
            sha = hashlib.sha256(path.read_bytes()).hexdigest()
            if not isinstance(meta, dict) or meta.get("sha256") != sha:
                out.problems.append(f"sample {path}: metadata sha256 is not the image's")
                continue
            out.samples += 1
            out.sha_by_label.setdefault(label, Counter())[sha] += 1


def _check_models(models: Path, out: Integrity) -> None:
    for path in sorted(models.rglob("*.npz")):
        if path.name.startswith("."):
            continue
        try:
            read_memory(path)
        except CorruptArtifact as exc:
            out.problems.append(str(exc))
            continue
        out.memories += 1
    for path in sorted(models.rglob("*_calib.json")):
        if path.name.startswith("."):
            continue
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            out.problems.append(f"calibration {path} is unreadable: {exc}")
            continue
        if not isinstance(data, dict) or not isinstance(data.get("threshold"), int | float):
            out.problems.append(f"calibration {path} has no numeric threshold")
            continue
        out.calibrations += 1


# -- an agent subprocess, spoken to over HTTP -----------------------------------------------


class HttpAgent(FrontDoor):
    """``python -m agent run`` with its HTTP adapter on a free port of 127.0.0.1 (and the
    other adapters as ``env`` says); its output lines are collected as they come."""

    def __init__(self, data_root: Path, **env: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = cli_env(
            data_root,
            **{
                "BDI_CORESET_MIN": "256",
                "BDI_HTTP__ENABLED": "true",
                "BDI_HTTP__HOST": "127.0.0.1",
                "BDI_HTTP__PORT": str(self.port),
                **env,
            },
        )
        super().__init__("agent", ["run"], self.env)

    def client(self, timeout: float = 120) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=timeout)

    def wait_ready(self, timeout: float = 180) -> None:
        """Until ``/health`` says ok (the model is loaded)."""
        deadline = time.monotonic() + timeout
        with self.client(timeout=5) as client:
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    raise AssertionError(
                        f"the agent exited ({self.proc.returncode}):\n{self.output()}"
                    )
                try:
                    if client.get("/health").status_code == 200:
                        return
                except httpx.TransportError:
                    pass
                time.sleep(0.2)
        raise AssertionError(f"the agent never became ready:\n{self.output()}")

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=30)

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                return self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        return self.proc.wait(timeout=30)


class InFlight:
    """One HTTP request on a thread: its response, or the transport error the kill gave."""

    def __init__(self, send: Callable[[], httpx.Response]) -> None:
        self.response: httpx.Response | None = None
        self.error: Exception | None = None
        self._thread = threading.Thread(target=self._run, args=(send,), daemon=True)
        self._thread.start()

    def _run(self, send: Callable[[], httpx.Response]) -> None:
        try:
            self.response = send()
        except httpx.TransportError as exc:
            self.error = exc

    @property
    def done(self) -> bool:
        return not self._thread.is_alive()

    def join(self) -> None:
        self._thread.join(60)


def upload(images: list[bytes]) -> list[tuple[str, tuple[str, bytes, str]]]:
    return [("images", (f"roi_{i}.png", data, "image/png")) for i, data in enumerate(images)]


def wait_until(
    condition: Callable[[], bool], timeout: float, what: str, poll: float = 0.02
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(poll)
    raise AssertionError(f"timed out waiting for {what}")


# -- mounts (root only) ----------------------------------------------------------------------


def mount_reason() -> str | None:
    """Why a tmpfs cannot be mounted here, or None when it can."""
    if os.geteuid() != 0:
        return "the fault needs a tmpfs mount, which needs root (the tests run as a user)"
    return None


@contextlib.contextmanager
def tmpfs(path: Path, size: str = "8m") -> Iterator[Path]:
    """A small tmpfs at ``path``, unmounted afterwards (lazily, whatever still holds it)."""
    path.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", str(path)],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        import pytest

        pytest.skip(f"cannot mount a tmpfs at {path}: {done.stderr.strip() or done.returncode}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], capture_output=True)


def remount(path: Path, options: str) -> None:
    subprocess.run(["mount", "-o", f"remount,{options}", str(path)], check=True)


def fill(folder: Path, leave: int = 0) -> Path:
    """Fill the file system of ``folder`` to the last byte but about ``leave``; the filler
    is returned so it can be removed to free the space again."""
    reserve = folder / "reserve.bin"
    reserve.write_bytes(b"\0" * leave)
    filler = folder / "filler.bin"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        for size in (1 << 20, 4096, 1):  # big chunks, then whatever bytes are left
            with contextlib.suppress(OSError):
                while os.write(fd, b"\0" * size):
                    pass
    finally:
        os.close(fd)
    reserve.unlink()
    return filler


def body_of(response: httpx.Response) -> dict[str, Any]:
    data = response.json()
    assert isinstance(data, dict), data
    return data
