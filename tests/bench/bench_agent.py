"""Agent core: bus overhead, infer latency during a fit, micro-batching (issue: agent core).

Targets: bus overhead <= 5 ms at p50 over the engine alone; infer p95 during a 100-image
fit <= 2x the idle p95; a burst of 8 ROIs faster micro-batched than one by one.
"""

from __future__ import annotations

import shutil
import time

from agent.parsing import parse_command
from tests.bench._agent_setup import (
    bench_agent,
    engine_infer,
    fit_command,
    infer_payload,
    test_pngs,
)
from tests.bench._measure import median as p50
from tests.bench._measure import percentile as p
from tests.bench._measure import time_ms
from tests.bench._report import emit, emit_target, log


def main(quick: bool = False) -> None:
    runs = 8 if quick else 30
    agent, root = bench_agent(n_fit=4 if quick else 10)
    try:
        pngs = test_pngs(8)
        engine = engine_infer(agent)
        engine_ms = time_ms(lambda: engine(pngs[0]), 2, runs)

        overheads: list[float] = []

        def through_bus() -> None:
            cmd = parse_command("infer", infer_payload(pngs[0]), "bench")
            start = time.perf_counter()
            reply = agent.bus.execute(cmd)
            elapsed = (time.perf_counter() - start) * 1000
            assert reply.ok and reply.body is not None
            overheads.append(elapsed - reply.body["inference_ms"])

        bus_ms = time_ms(through_bus, 2, runs)
        overheads = overheads[-runs:]
        emit("agent.infer_engine_alone", p50_ms=p50(engine_ms), p95_ms=p(engine_ms, 0.95))
        emit("agent.infer_through_bus", p50_ms=p50(bus_ms), p95_ms=p(bus_ms, 0.95))
        emit_target(
            "agent.bus_overhead_p50",
            p50(overheads),
            "<=",
            5.0,
            "ms",
            method="bus round trip minus the reply's own inference_ms",
            medians_difference_ms=p50(bus_ms) - p50(engine_ms),
        )

        log("infer latency while a fit runs")
        n_fit = 20 if quick else 100
        fit = agent.bus.submit(fit_command(test_pngs(n_fit, seed=303)))
        during: list[float] = []
        while not fit.done():
            start = time.perf_counter()
            assert agent.bus.execute(parse_command("infer", infer_payload(pngs[1]), "bench")).ok
            during.append((time.perf_counter() - start) * 1000)
        assert fit.result().ok
        idle = time_ms(through_bus, 0, runs)
        emit(
            "agent.infer_during_fit",
            n_fit_images=n_fit,
            samples=len(during),
            p50_ms=p50(during),
            p95_ms=p(during, 0.95),
            idle_p95_ms=p(idle, 0.95),
        )
        emit_target(
            "agent.infer_p95_during_fit_ratio",
            p(during, 0.95) / p(idle, 0.95),
            "<=",
            2.0,
            "x idle p95",
        )

        log("burst of 8 ROIs: micro-batched vs one by one")
        commands = [
            parse_command("infer", infer_payload(png, heatmap=False), "bench") for png in pngs
        ]
        start = time.perf_counter()
        futures = [agent.bus.submit(cmd) for cmd in commands]
        assert all(f.result().ok for f in futures)
        batched = (time.perf_counter() - start) * 1000
        start = time.perf_counter()
        for cmd in commands:
            assert agent.bus.execute(cmd).ok
        serial = (time.perf_counter() - start) * 1000
        emit("agent.burst8", batched_ms=batched, one_by_one_ms=serial)
        emit_target("agent.burst8_speedup", serial / batched, ">", 1.0, "x")
    finally:
        agent.stop()
        shutil.rmtree(root, ignore_errors=True)
