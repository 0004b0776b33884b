"""The agent's resident memory after 10,000 infers with heatmaps against after 1,000
(issue 14; target: under 20 MB apart).

A real agent process with the default settings (every cache at its default bound: 32 MB of
replies kept for repeats, 50 recent verdicts within 32 MB, a 1 MB events backlog), a real
mosquitto, and a PLC streaming MQTT infers of 448-px crops (a 448x448 heatmap in every
reply, as when the adapter kept its last 20,000 replies and grew 42 MB over 1,800), 16 in
flight, each with a request id of its own. The backbone input is 56 px with random weights:
the engine's own size does not change what is kept per request, only how long the run
takes. Each RSS reading is taken with nothing in flight.

``--quick``: 200 against 2,000 infers. ``python -m tests.bench.run_all --only memory``.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from pathlib import Path

from tests.bench._compare import emit_met
from tests.bench._report import emit, log
from tests.bench.bench_isolation import commit
from tests.reliability.memory_support import StreamedAgent, crops

CROP = 448
INPUT_SIZE = 56
TARGET_MB = 20.0


def main(quick: bool = False) -> None:
    first, last = (200, 2000) if quick else (1000, 10_000)
    work = Path(tempfile.mkdtemp(prefix="bdi-bench-memory-"))
    agent = StreamedAgent(work, input_size=INPUT_SIZE)
    readings: dict[int, float] = {}
    started = time.perf_counter()
    try:
        agent.start()
        agent.fit(crops(4, CROP))
        pngs = crops(6, CROP, seed=5)
        log(f"streaming {last} infers of {CROP}-px crops")

        def read(answered: int) -> None:
            readings[answered] = agent.rss_mb()
            log(f"{answered} infers: RSS {readings[answered]:.1f} MB")

        agent.stream(pngs, first, progress=read)
        agent.stream(pngs, last - first, every=1000, progress=read)
        at_first, at_last = readings[first], readings[last]
        emit(
            "memory.agent_rss",
            commit=commit(),
            crop_px=CROP,
            input_size=INPUT_SIZE,
            infers=agent.tally.ok,
            errors=agent.tally.errors,
            rss_by_infers_mb={str(n): round(mb, 1) for n, mb in sorted(readings.items())},
            wall_s=time.perf_counter() - started,
            loadavg=os.getloadavg(),
        )
        emit_met(
            f"memory.rss_after_{last}_minus_after_{first}",
            at_last - at_first if agent.tally.errors == 0 else None,
            "<",
            TARGET_MB,
            "MB",
            rss_after_first_mb=at_first,
            rss_after_last_mb=at_last,
        )
    finally:
        agent.stop()
        shutil.rmtree(work, ignore_errors=True)
