"""Inference kept apart from a broker outage and from a fit (issue 14), side by side.

(a) ``isolation.infer_p95_broker_down_vs_up`` (target <= 1.1x): two agents in this
    process, one whose broker is up and one whose broker is down, each with its MQTT adapter
    on. Infers go through the bus alternately, one at a time, so machine load slows both
    alike; each reply is then published the way the MQTT adapter publishes a reply (its
    envelope with the heatmap, posted to the outbox), and the verdict event goes to the
    ``last`` topic. With the broker down all of it goes to the disk spool, one fsync'd file
    per message. The figure is the infer's own latency (submit to reply): a slow broker or
    disk must never delay the next inference.
(b) ``isolation.infer_batch_p95_during_fit_vs_idle`` (target <= 1.5x): ``infer_batch``
    calls of 4 crops on one ROI while a 30-image ``fit_ok`` (new images: the backbone runs)
    rebuilds another ROI, against the same calls with the worker idle, measured before and
    after the fits.

Random weights, torch fp32, 224-px input and crops (the ratios are the figures; absolute
times depend on the machine and its load). ``python -m tests.bench.run_all --only isolation``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from concurrent.futures import Future
from pathlib import Path

from adapters.mqtt.adapter import MqttAdapter, create
from adapters.mqtt.topics import envelope, json_payload
from agent.bootstrap import Agent
from agent.parsing import parse_command
from agent.replies import Reply
from tests.adapters.mqtt_support import Broker, free_port, wait_connected
from tests.bench._agent_setup import ROI, b64, bench_agent, infer_payload, test_pngs
from tests.bench._compare import emit_met, ratio
from tests.bench._measure import median, percentile
from tests.bench._report import emit, log

SIZE = 224
FIT_IMAGES = 30
BATCH_ITEMS = 4
ROI_B = {"role_id": "Inspection", "roi_id": "Inspection_2"}
ENGINE = {"input_size": SIZE, "runtime": "torch", "precision": "fp32"}


def commit() -> str:
    try:
        done = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True
        )
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return done.stdout.strip()


def main(quick: bool = False) -> None:
    emit("isolation.run", commit=commit(), loadavg=os.getloadavg(), quick=quick)
    broker_down_vs_up(runs=30 if quick else 150)
    batch_during_fit(rounds=1 if quick else 3, idle_runs=8 if quick else 20)


# -- (a) broker down vs up ---------------------------------------------------------------


def _mqtt_agent(port: int, agent_id: str) -> tuple[Agent, MqttAdapter, Path]:
    mqtt = {"enabled": True, "host": "127.0.0.1", "port": port}
    agent, root = bench_agent(size=SIZE, n_fit=6, agent_id=agent_id, mqtt=mqtt, **ENGINE)
    adapter = create(agent.settings, agent)
    adapter.start()
    return agent, adapter, root


def _timed_infer(agent: Agent, adapter: MqttAdapter, png: bytes) -> float:
    """One infer's latency; its reply then leaves as an MQTT reply does (outbox thread)."""
    cmd = parse_command("infer", infer_payload(png), "bench")
    topic = adapter.topics.result("infer")

    def send(reply: Reply) -> None:
        adapter.outbox.publish(topic, json_payload(envelope(reply, 0)))

    start = time.perf_counter()
    future: Future[Reply] = agent.bus.submit(cmd)
    reply = future.result(timeout=300)
    elapsed = (time.perf_counter() - start) * 1000
    assert reply.ok and reply.body is not None and "heatmap_png_base64" in reply.body
    adapter.outbox.post(lambda: send(reply))
    return elapsed


def broker_down_vs_up(runs: int) -> None:
    log(f"infer with the broker up and down, {runs} each, alternated")
    broker_dir = Path(tempfile.mkdtemp(prefix="bdi-bench-broker-"))
    broker = Broker(broker_dir)
    broker.start()
    agents: list[tuple[Agent, MqttAdapter, Path]] = []
    try:
        agents.append(_mqtt_agent(broker.port, "up"))
        agents.append(_mqtt_agent(free_port(), "down"))  # nothing listens there
        (up, up_adapter, _), (down, down_adapter, _) = agents
        wait_connected(up, timeout=30)
        pngs = test_pngs(8, size=SIZE)
        for i in range(3):  # warm-up: kernels and allocator pools of both
            _timed_infer(up, up_adapter, pngs[i])
            _timed_infer(down, down_adapter, pngs[i])
        spooled_before = down_adapter.spool.size
        times: dict[str, list[float]] = {"up": [], "down": []}
        for i in range(runs):
            png = pngs[i % len(pngs)]
            order = (("up", up, up_adapter), ("down", down, down_adapter))
            for name, agent, adapter in order if i % 2 == 0 else order[::-1]:
                times[name].append(_timed_infer(agent, adapter, png))
        assert up_adapter.outbox.drain(120) and down_adapter.outbox.drain(300)
        assert up.bus.mqtt_state == "connected" and down.bus.mqtt_state == "disconnected"
        spooled = down_adapter.spool.size - spooled_before
        up_p95, down_p95 = percentile(times["up"], 0.95), percentile(times["down"], 0.95)
        emit(
            "isolation.infer_broker_down_vs_up",
            runs=runs,
            up_p50_ms=median(times["up"]),
            up_p95_ms=up_p95,
            down_p50_ms=median(times["down"]),
            down_p95_ms=down_p95,
            spooled_messages=spooled,
            spool_bytes=down_adapter.spool.total_bytes,
            up_spool_left=up_adapter.spool.size,
        )
        emit_met(
            "isolation.infer_p95_broker_down_vs_up",
            ratio(down_p95, up_p95),
            "<=",
            1.1,
            "x",
            down_p95_ms=down_p95,
            up_p95_ms=up_p95,
            method="two agents, infers alternated; the down one spools every reply "
            "(with heatmap) and verdict event, fsync'd",
        )
    finally:
        for agent, adapter, root in agents:
            adapter.stop()
            agent.stop()
            shutil.rmtree(root, ignore_errors=True)
        broker.stop()
        shutil.rmtree(broker_dir, ignore_errors=True)


# -- (b) infer_batch during a fit vs idle --------------------------------------------------


def _batch_ms(agent: Agent, pngs: list[bytes]) -> float:
    items = [{**infer_payload(p), **ROI_B} for p in pngs]
    cmd = parse_command("infer_batch", {"items": items}, "bench")
    start = time.perf_counter()
    reply = agent.bus.execute(cmd, timeout=300)
    elapsed = (time.perf_counter() - start) * 1000
    assert reply.ok and reply.body is not None, reply.to_dict()
    assert all(item.get("ok") for item in reply.body["results"]), reply.body
    return elapsed


def _fit(agent: Agent, roi: dict[str, str], pngs: list[bytes]) -> Future[Reply]:
    payload = {**roi, "mm_per_px": 0.2, "images": [b64(p) for p in pngs]}
    return agent.bus.submit(parse_command("fit_ok", payload, "bench"))


def batch_during_fit(rounds: int, idle_runs: int) -> None:
    log(f"infer_batch of {BATCH_ITEMS} during {rounds} fits of {FIT_IMAGES} images vs idle")
    agent, root = bench_agent(size=SIZE, n_fit=6, **ENGINE)
    try:
        assert _fit(agent, ROI_B, test_pngs(6, size=SIZE, seed=404)).result(600).ok
        pngs = test_pngs(BATCH_ITEMS, size=SIZE)
        for _ in range(2):
            _batch_ms(agent, pngs)
        idle = [_batch_ms(agent, pngs) for _ in range(idle_runs)]
        during: list[float] = []
        fit_s: list[float] = []
        for n in range(rounds):
            clear = {**ROI, "label": "ok"}
            assert agent.bus.execute(parse_command("dataset_clear", clear, "bench")).ok
            images = test_pngs(FIT_IMAGES, size=SIZE, seed=500 + n)  # new: the backbone runs
            start = time.perf_counter()
            fit = _fit(agent, ROI, images)
            while not fit.done():
                during.append(_batch_ms(agent, pngs))
            assert fit.result().ok, fit.result().to_dict()
            fit_s.append(time.perf_counter() - start)
        idle += [_batch_ms(agent, pngs) for _ in range(idle_runs)]
        idle_p95, during_p95 = percentile(idle, 0.95), percentile(during, 0.95)
        emit(
            "isolation.infer_batch_during_fit",
            batch_items=BATCH_ITEMS,
            fit_images=FIT_IMAGES,
            fits=rounds,
            fit_s=fit_s,
            samples_during=len(during),
            samples_idle=len(idle),
            during_p50_ms=median(during) if during else None,
            during_p95_ms=during_p95 if during else None,
            idle_p50_ms=median(idle),
            idle_p95_ms=idle_p95,
        )
        emit_met(
            "isolation.infer_batch_p95_during_fit_vs_idle",
            ratio(during_p95, idle_p95) if during else None,
            "<=",
            1.5,
            "x",
            during_p95_ms=during_p95 if during else None,
            idle_p95_ms=idle_p95,
        )
    finally:
        agent.stop()
        shutil.rmtree(root, ignore_errors=True)
