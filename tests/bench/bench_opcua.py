"""OPC UA adapter benchmark: how fast a verdict reaches a PLC, and what subscribers cost.

A real asyncua server (the agent's OPC UA adapter on a free port, anonymous on loopback).

- Notification latency: from the core's ``verdict`` event (stamped on the delivery
  thread) to the data-change notification of ``Seq`` at an asyncua client subscribed with
  a 10 ms publishing interval, both in this process (one clock).
- Subscriber cost: ``infer`` p95 through the bus with 5 subscribed clients (separate
  processes, as PLCs are separate machines; each watches every variable of the ROI)
  against none, interleaved in blocks so drift hits both alike.

Synthetic 448-px discs, backbone input 224 px with random weights.

    python -m tests.bench.bench_opcua [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from tests.bench._measure import median, percentile
from tests.bench._report import emit, emit_target, log

IMAGE_SIZE = 448
INPUT_SIZE = 224
THREADS = 2
MM_PER_PX = 0.2
PUBLISH_MS = 10
CLIENTS = 5
TARGET_NOTIFY_P50_MS = 20.0
TARGET_INFER_P95_RATIO = 1.05
ROI = {"role_id": "Bench", "roi_id": "ROI_1"}
NAMESPACE = "urn:bdi:bench"
ROI_PATH = ["BDI", "ROIs", "default", ROI["role_id"], ROI["roi_id"]]

# A PLC stand-in: subscribes to every variable of the ROI, says "ready", then idles.
SUBSCRIBER = """
import asyncio, sys
from asyncua import Client

class Quiet:
    def datachange_notification(self, node, value, data):
        pass

async def main(url, ns_uri, path, interval):
    async with Client(url) as client:
        ns = await client.get_namespace_index(ns_uri)
        roi = await client.nodes.objects.get_child([f"{ns}:{p}" for p in path.split("|")])
        subscription = await client.create_subscription(float(interval), Quiet())
        await subscription.subscribe_data_change(await roi.get_children())
        print("ready", flush=True)
        await asyncio.sleep(3600)

asyncio.run(main(*sys.argv[1:]))
"""


def main(quick: bool = False) -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # random weights: never reach a model hub
    from agent.logging import configure_logging

    configure_logging("WARNING", sys.stderr)  # stdout carries the JSON lines only
    notify_runs, infer_runs, blocks = (20, 10, 2) if quick else (100, 30, 4)
    stamps: dict[int, float] = {}  # verdict seq -> when the core delivered its event
    with tempfile.TemporaryDirectory(prefix="bench-opcua-") as tmp:
        agent, adapter = _start(Path(tmp), stamps)
        try:
            _fit(agent)
            _bench_notify(agent, adapter.url, stamps, notify_runs, quick)
            _bench_subscribers(agent, adapter.url, infer_runs, blocks, quick)
        finally:
            adapter.stop()
            agent.stop()


def _start(data_root: Path, stamps: dict[int, float]) -> tuple[Any, Any]:
    from adapters.opcua.adapter import create
    from agent.bootstrap import bootstrap
    from agent.config import Settings

    settings = Settings(
        agent_id="bench",
        data_root=data_root,
        backbone_weights="random",
        input_size=INPUT_SIZE,
        precision="fp32",
        threads=THREADS,
        coreset_min=256,
        rois_file=data_root / "rois.yaml",
        mqtt={"enabled": False},
        folders={"enabled": False},
        http={"enabled": False},
        opcua={"enabled": True, "port": 0},
    )
    agent = bootstrap(settings)
    agent.start(load_model=False)
    agent.load_model()

    def stamp(event: Any) -> None:
        if event.name == "verdict":
            stamps[event.seq] = time.perf_counter()

    # Listening before the adapter does: the stamp is taken before the adapter sees the event.
    agent.bus.events.subscribe(stamp)
    adapter = create(settings, agent)
    adapter.start()
    return agent, adapter


def _infer(agent: Any, png: bytes) -> float:
    """One infer through the bus; its wall time in ms."""
    from agent.parsing import parse_command

    command = parse_command("infer", {**ROI, "mm_per_px": MM_PER_PX, "image": png}, "bench")
    start = time.perf_counter()
    reply = agent.bus.execute(command, timeout=120)
    elapsed = (time.perf_counter() - start) * 1000
    assert reply.ok, reply.to_dict()
    return elapsed


def _test_pngs() -> list[bytes]:
    from agent.demo.discs import encode_png, make_set

    return [encode_png(d.image) for d in make_set(2, 4, size=IMAGE_SIZE)]


def _fit(agent: Any) -> None:
    from agent.demo.discs import encode_png, make_set
    from agent.parsing import parse_command

    train = [encode_png(d.image) for d in make_set(1, 8, size=IMAGE_SIZE)]
    log(f"opcua: fit {len(train)} OK discs of {IMAGE_SIZE} px")
    command = parse_command("fit_ok", {**ROI, "mm_per_px": MM_PER_PX, "images": train}, "bench")
    reply = agent.bus.execute(command, timeout=300)
    assert reply.ok, reply.to_dict()


def _bench_notify(agent: Any, url: str, stamps: dict[int, float], runs: int, quick: bool) -> None:
    from asyncua import Client

    pngs = _test_pngs()

    class Arrivals:
        def __init__(self) -> None:
            self.queue: asyncio.Queue[tuple[Any, float]] = asyncio.Queue()

        def datachange_notification(self, node: Any, value: Any, data: Any) -> None:
            self.queue.put_nowait((value, time.perf_counter()))

    async def scenario() -> list[float]:
        async with Client(url) as client:
            ns = await client.get_namespace_index(NAMESPACE)
            roi = await client.nodes.objects.get_child([f"{ns}:{p}" for p in ROI_PATH])
            arrivals = Arrivals()
            subscription = await client.create_subscription(PUBLISH_MS, arrivals)
            await subscription.subscribe_data_change(await roi.get_child(f"{ns}:Seq"))
            await arrivals.queue.get()  # the current value, on subscribing
            latencies = []
            for i in range(runs + 3):
                await asyncio.to_thread(_infer, agent, pngs[i % len(pngs)])
                seq, arrived = await asyncio.wait_for(arrivals.queue.get(), 30)
                if i >= 3 and seq in stamps:  # 3 warm-up verdicts
                    latencies.append((arrived - stamps[seq]) * 1000)
            return latencies

    log(f"opcua: {runs} verdicts to a subscriber of Seq ({PUBLISH_MS} ms publishing)")
    latencies = asyncio.run(scenario())
    p50 = median(latencies) if latencies else None
    emit_target(
        "opcua.notify_p50_ms",
        p50,
        "<=",
        TARGET_NOTIFY_P50_MS,
        "ms",
        met=p50 is not None and p50 <= TARGET_NOTIFY_P50_MS,
        p95_ms=percentile(latencies, 0.95) if latencies else None,
        runs=len(latencies),
        matched=f"{len(latencies)}/{runs}",
        publishing_interval_ms=PUBLISH_MS,
        quick=quick,
    )


def _bench_subscribers(agent: Any, url: str, runs: int, blocks: int, quick: bool) -> None:
    pngs = _test_pngs()
    for i in range(3):  # warm-up
        _infer(agent, pngs[i % len(pngs)])
    alone: list[float] = []
    watched: list[float] = []
    for block in range(blocks):
        log(f"opcua: block {block + 1}/{blocks}: {runs} infers alone, {runs} with {CLIENTS}")
        alone += [_infer(agent, pngs[i % len(pngs)]) for i in range(runs)]
        clients = _start_subscribers(url)
        try:
            watched += [_infer(agent, pngs[i % len(pngs)]) for i in range(runs)]
        finally:
            for child in clients:
                child.kill()
                child.wait()
    ratio = percentile(watched, 0.95) / percentile(alone, 0.95)
    emit_target(
        "opcua.infer_p95_ratio_5_clients",
        ratio,
        "<=",
        TARGET_INFER_P95_RATIO,
        "x",
        met=ratio <= TARGET_INFER_P95_RATIO,
        p95_alone_ms=percentile(alone, 0.95),
        p95_with_clients_ms=percentile(watched, 0.95),
        p50_alone_ms=median(alone),
        p50_with_clients_ms=median(watched),
        clients=CLIENTS,
        runs=len(alone),
        publishing_interval_ms=PUBLISH_MS,
        quick=quick,
    )
    emit("opcua.infer_p50_ratio_5_clients", value=median(watched) / median(alone), unit="x")


def _start_subscribers(url: str) -> list[subprocess.Popen[str]]:
    """``CLIENTS`` subscriber processes, returned once each has subscribed."""
    args = [url, NAMESPACE, "|".join(ROI_PATH), str(PUBLISH_MS)]
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    children = [
        subprocess.Popen(
            [sys.executable, "-c", SUBSCRIBER, *args],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        for _ in range(CLIENTS)
    ]
    for child in children:
        assert child.stdout is not None
        if child.stdout.readline().strip() != "ready":
            raise RuntimeError("an OPC UA subscriber did not subscribe")
    return children


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer runs, for a smoke run")
    main(quick=parser.parse_args().quick)
