"""Folder adapter benchmark: what the adapter adds on top of the engine.

* latency: from the rename into ``inbox/<role>/<roi>/infer/`` to ``<stem>.result.json`` on
  disk, one file at a time, minus the engine time of the same command (the reply's
  ``elapsed_ms``: queue wait + decode + backbone + scoring + heatmap). ``settle_ms`` is 50.
* burst: 300 files renamed into the inbox at once, files per second until the last result
  is on disk, against the same 300 infers submitted straight to the bus (32 in flight).

Random weights, CPU, synthetic discs. One JSON line per measurement on stdout; targets carry
``"pass"``. ``python -m tests.bench.bench_folders [--quick]``.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.bench._measure import median, percentile
from tests.bench._report import emit, emit_target, log

SETTLE_MS = 50
MM = 0.2
TARGET_OVERHEAD_P50_MS = 50.0
TARGET_BURST_VS_BUS = 0.8  # the adapter may cost at most a fifth of the engine's throughput


@dataclass(frozen=True)
class Sizes:
    image: int  # disc side in px, also the backbone input size
    warmup: int
    latency_runs: int
    burst: int


FULL = Sizes(224, 3, 40, 300)
QUICK = Sizes(112, 2, 10, 60)


class Replies:
    """Published replies by the image path they were published with."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self.by_name: dict[str, Any] = {}

    def __call__(self, reply: Any, extra: dict[str, Any]) -> None:
        with self._cond:
            self.by_name[Path(extra.get("path", "")).name] = reply
            self._cond.notify_all()

    def wait(self, name: str, timeout: float = 120) -> Any:
        with self._cond:
            if not self._cond.wait_for(lambda: name in self.by_name, timeout):
                raise TimeoutError(f"no reply published for {name}")
            return self.by_name[name]


def main(quick: bool = False) -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # random weights: never reach a model hub
    from agent.logging import configure_logging

    configure_logging("WARNING", sys.stderr)  # stdout carries only the JSON lines
    sizes = QUICK if quick else FULL
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bench-folders-") as tmp:
        agent, adapter, replies = _start(Path(tmp), sizes)
        try:
            pngs = _discs(sizes.image)
            _fit(agent, pngs[:8])
            _latency(agent, replies, pngs, sizes)
            _burst(agent, pngs, sizes)
        finally:
            adapter.stop()
            agent.stop(timeout=60)
    emit("folders.done", wall_s=time.perf_counter() - started, loadavg=os.getloadavg())


def _start(root: Path, sizes: Sizes) -> tuple[Any, Any, Replies]:
    from adapters.folders.adapter import create
    from agent.bootstrap import bootstrap
    from agent.config import Settings

    data = root / "data"
    data.mkdir()
    (data / "rois.yaml").write_text(f"rois:\n  - {{role_id: r, roi_id: i, mm_per_px: {MM}}}\n")
    settings = Settings(
        data_root=data,
        backbone_weights="random",
        input_size=sizes.image,
        precision="fp32",
        coreset_min=256,
        rois_file=data / "rois.yaml",
        mqtt={"enabled": False},
        http={"enabled": False},
        folders={"enabled": True, "settle_ms": SETTLE_MS, "rescan_s": 600},
    )
    agent = bootstrap(settings)
    replies = Replies()
    agent.services.reply_listeners.append(replies)
    agent.start(load_model=False)
    agent.load_model()
    adapter = create(settings, agent)
    adapter.start()
    emit(
        "folders.env",
        quick=sizes is QUICK,
        image_px=sizes.image,
        settle_ms=SETTLE_MS,
        cpu_count=os.cpu_count(),
        loadavg=os.getloadavg(),
    )
    return agent, adapter, replies


def _discs(size: int) -> list[bytes]:
    from agent.demo.discs import encode_png, make_set

    return [encode_png(d.image) for d in make_set(seed=71, n_ok=24, size=size)]


def _fit(agent: Any, pngs: list[bytes]) -> None:
    from agent.parsing import parse_command

    payload = {"role_id": "r", "roi_id": "i", "mm_per_px": MM, "images": pngs}
    reply = agent.bus.execute(parse_command("fit_ok", payload, "bench"), timeout=600)
    if not reply.ok:
        raise RuntimeError(f"fit failed: {reply.to_dict()}")


def _result_path(agent: Any, stem: str) -> Callable[[], Path | None]:
    from adapters.folders.output import utc_day

    processed = agent.settings.data_root / "processed"

    def find() -> Path | None:
        # The exact path and a cheap exists(): the poll shares the GIL with the agent.
        path = processed / utc_day() / "r" / "i" / "infer" / f"{stem}.result.json"
        return path if os.path.exists(path) else None

    return find


def _wait_file(find: Callable[[], Path | None], timeout: float = 120) -> float:
    """perf_counter() when the file appeared (polled every millisecond)."""
    deadline = time.perf_counter() + timeout
    while find() is None:
        if time.perf_counter() > deadline:
            raise TimeoutError("result file never appeared")
        time.sleep(0.001)
    return time.perf_counter()


def _latency(agent: Any, replies: Replies, pngs: list[bytes], sizes: Sizes) -> None:
    log("== latency, one file at a time")
    folder = agent.settings.data_root / "inbox" / "r" / "i" / "infer"
    folder.mkdir(parents=True, exist_ok=True)
    latency, engine, overhead, over_floor = [], [], [], []
    for k in range(sizes.warmup + sizes.latency_runs):
        stem = f"lat{k:03d}"
        tmp = folder / f"{stem}.png.tmp"
        tmp.write_bytes(pngs[k % len(pngs)])
        find = _result_path(agent, stem)
        start = time.perf_counter()
        os.rename(tmp, folder / f"{stem}.png")
        done = _wait_file(find)
        reply = replies.wait(f"{stem}.png")
        if not reply.ok:
            raise RuntimeError(f"infer failed: {reply.to_dict()}")
        if k < sizes.warmup:
            continue
        latency.append((done - start) * 1000)
        engine.append(reply.elapsed_ms)
        overhead.append(latency[-1] - reply.elapsed_ms)
        # The settle wait overlaps the engine work; this is what is left above both.
        over_floor.append(latency[-1] - max(reply.elapsed_ms, SETTLE_MS))
    stats = {"p50": median(latency), "p95": percentile(latency, 0.95), "n": len(latency)}
    emit("folders.latency_ms", **stats, settle_ms=SETTLE_MS)
    emit("folders.engine_ms", p50=median(engine), p95=percentile(engine, 0.95))
    emit_target(
        "folders.overhead_p50_ms",
        median(overhead),
        "<=",
        TARGET_OVERHEAD_P50_MS,
        "ms",
        p95=percentile(overhead, 0.95),
        above_max_engine_settle_p50=median(over_floor),
        settle_ms=SETTLE_MS,
        loadavg=os.getloadavg(),
    )


def _burst(agent: Any, pngs: list[bytes], sizes: Sizes) -> None:
    log(f"== burst of {sizes.burst}: bus alone, then through the inbox")
    bus_fps = _bus_rate(agent, pngs, sizes.burst)
    folder = agent.settings.data_root / "inbox" / "r" / "i" / "infer"
    names = [f"burst{i:03d}" for i in range(sizes.burst)]
    for i, stem in enumerate(names):
        (folder / f"{stem}.png.tmp").write_bytes(pngs[i % len(pngs)])
    processed = agent.settings.data_root / "processed"
    start = time.perf_counter()
    for stem in names:
        os.rename(folder / f"{stem}.png.tmp", folder / f"{stem}.png")
    deadline = start + 600
    while len(list(processed.glob("*/r/i/infer/burst*.result.json"))) < sizes.burst:
        if time.perf_counter() > deadline:
            raise TimeoutError("burst never finished")
        time.sleep(0.01)
    elapsed = time.perf_counter() - start
    folder_fps = sizes.burst / elapsed
    emit("folders.burst_files_per_s", value=folder_fps, n=sizes.burst, wall_s=elapsed)
    emit("folders.bus_files_per_s", value=bus_fps, n=sizes.burst)
    emit_target(
        "folders.burst_vs_bus",
        folder_fps / bus_fps,
        ">=",
        TARGET_BURST_VS_BUS,
        "ratio",
        folder_files_per_s=folder_fps,
        bus_files_per_s=bus_fps,
        loadavg=os.getloadavg(),
    )


def _bus_rate(agent: Any, pngs: list[bytes], n: int, window: int = 32) -> float:
    """Infers per second with the same engine, submitted straight to the bus."""
    from agent.parsing import parse_command

    pending: list[Any] = []
    start = time.perf_counter()
    for i in range(n):
        payload = {"role_id": "r", "roi_id": "i", "mm_per_px": MM, "image": pngs[i % len(pngs)]}
        pending.append(agent.bus.submit(parse_command("infer", payload, "bench")))
        if len(pending) >= window:
            pending.pop(0).result(timeout=600)
    for future in pending:
        future.result(timeout=600)
    return n / (time.perf_counter() - start)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="small sizes, for a smoke run")
    main(quick=parser.parse_args().quick)
