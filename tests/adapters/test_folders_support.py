"""Helpers for the folder adapter tests (no tests here): a small real backbone, agents with
the adapter running on a temp data root, synthetic discs, and waiting on the disk."""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from adapters.folders.adapter import FolderAdapter, create
from agent.bootstrap import Agent, bootstrap, build_engine
from agent.demo.discs import encode_png, make_set
from agent.parsing import parse_command
from agent.replies import Reply
from engine.features import BackboneConfig, FeatureExtractor
from tests.conftest import agent_settings

SIZE = 112  # 8x8 tokens: the folder tests are about files, not about accuracy
MM = 0.2
FOLDERS = {"enabled": True, "settle_ms": 100, "fit_debounce_s": 0.5, "rescan_s": 2}


def small_extractor() -> FeatureExtractor:
    fx = FeatureExtractor(
        BackboneConfig(weights="random", input_size=SIZE, runtime="torch", precision="fp32")
    )
    fx.load()
    return fx


class Published:
    """Every reply the agent publishes (what the MQTT adapter would send)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.items: list[tuple[Reply, dict[str, Any], float]] = []

    def __call__(self, reply: Reply, extra: dict[str, Any]) -> None:
        with self._lock:
            self.items.append((reply, dict(extra), time.monotonic()))

    def of(self, command: str) -> list[tuple[Reply, dict[str, Any], float]]:
        with self._lock:
            return [item for item in self.items if item[0].command.name == command]


class FolderAgents:
    """Agents with a running folder adapter; all stopped at the end of the test."""

    def __init__(self, tmp_path: Path, extractor: FeatureExtractor) -> None:
        self.tmp_path = tmp_path
        self.extractor = extractor
        self.started: list[tuple[Agent, FolderAdapter]] = []

    def make(
        self, data_root: Path | None = None, rois: str | None = None, **folders: Any
    ) -> tuple[Agent, FolderAdapter, Published]:
        root = data_root or self.tmp_path / "data"
        root.mkdir(parents=True, exist_ok=True)
        if rois is not None:
            (root / "rois.yaml").write_text(rois)
        settings = agent_settings(root, input_size=SIZE, folders={**FOLDERS, **folders})
        core = build_engine(settings)
        core.extractor = self.extractor
        agent = bootstrap(settings, core=core)
        published = Published()
        agent.services.reply_listeners.append(published)
        agent.start(load_model=False)
        adapter = create(settings, agent)
        adapter.start()
        self.started.append((agent, adapter))
        return agent, adapter, published

    def stop(self, agent: Agent, adapter: FolderAdapter) -> None:
        self.started.remove((agent, adapter))
        adapter.stop()
        agent.stop(timeout=30)

    def close(self) -> None:
        for agent, adapter in reversed(list(self.started)):
            self.stop(agent, adapter)


def folder_agents(tmp_path: Path, extractor: FeatureExtractor) -> Iterator[FolderAgents]:
    agents = FolderAgents(tmp_path, extractor)
    yield agents
    agents.close()


def discs(seed: int, n_ok: int, n_per_defect: int = 0) -> list[bytes]:
    return [
        encode_png(d.image)
        for d in make_set(seed=seed, n_ok=n_ok, n_per_defect=n_per_defect, size=SIZE)
    ]


def fit(agent: Agent, role: str, roi: str, pngs: list[bytes]) -> dict[str, Any]:
    payload = {"role_id": role, "roi_id": roi, "mm_per_px": MM, "images": pngs}
    reply = agent.bus.execute(parse_command("fit_ok", payload, "test"), timeout=300)
    assert reply.ok, reply.to_dict()
    return reply.to_dict()


def infer_direct(agent: Agent, role: str, roi: str, png: bytes) -> dict[str, Any]:
    payload = {"role_id": role, "roi_id": roi, "mm_per_px": MM, "image": png}
    return agent.bus.execute(parse_command("infer", payload, "test"), timeout=300).to_dict()


def drop(folder: Path, name: str, data: bytes, sidecar: dict[str, Any] | None = None) -> Path:
    """The camera convention: sidecar first, then the image written as .tmp and renamed."""
    folder.mkdir(parents=True, exist_ok=True)
    if sidecar is not None:
        (folder / f"{Path(name).stem}.json").write_text(json.dumps(sidecar))
    tmp = folder / f"{name}.tmp"
    tmp.write_bytes(data)
    os.replace(tmp, folder / name)
    return folder / name


def wait_for(check: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.05)


def processed(data_root: Path, pattern: str = "*.result.json") -> list[Path]:
    return sorted((data_root / "processed").glob(f"*/*/*/*/{pattern}"))


def failed(data_root: Path, pattern: str = "*.error.json") -> list[Path]:
    return sorted((data_root / "failed").glob(f"*/*/*/*/{pattern}"))


def inbox_files(data_root: Path) -> list[Path]:
    return sorted(p for p in (data_root / "inbox").rglob("*") if p.is_file())


def read_json(path: Path) -> dict[str, Any]:
    return dict(json.loads(path.read_text()))
