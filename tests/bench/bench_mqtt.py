"""MQTT adapter: round trip over a real mosquitto minus the engine, burst throughput,
spool write and flush rates (issue: MQTT adapter).

Targets: overhead <= 15 ms at p50 with the heatmap in the reply, <= 5 ms without.
"""

from __future__ import annotations

import shutil
import tempfile
import time
import uuid
from pathlib import Path

from adapters.mqtt.adapter import create
from adapters.mqtt.spool import Spool
from tests.adapters.mqtt_support import Broker, Client, wait_connected
from tests.bench._agent_setup import (
    bench_agent,
    engine_infer,
    infer_payload,
    test_pngs,
)
from tests.bench._measure import median as p50
from tests.bench._measure import percentile as p
from tests.bench._measure import time_ms
from tests.bench._report import emit, emit_target, log

PREFIX = "bdi/bench"


def main(quick: bool = False) -> None:
    runs = 8 if quick else 30
    work = Path(tempfile.mkdtemp(prefix="bdi-bench-mqtt-"))
    broker = Broker(work / "broker")
    broker.start()
    agent, root = bench_agent(
        n_fit=4 if quick else 10, agent_id="bench", mqtt={"enabled": True, "port": broker.port}
    )
    adapter = create(agent.settings, agent)
    adapter.start()
    wait_connected(agent, timeout=30)
    plc = Client(broker.port, client_id="bench-plc", subscribe=(f"{PREFIX}/result/#",))
    try:
        png = test_pngs(1)[0]
        for heatmap, target in ((True, 15.0), (False, 5.0)):
            engine = engine_infer(agent, heatmap=heatmap)
            engine_ms = time_ms(lambda: engine(png), 2, runs)  # noqa: B023 - used at once
            round_trips: list[float] = []
            overheads: list[float] = []
            for _ in range(runs + 2):
                request_id = str(uuid.uuid4())
                payload = infer_payload(png, heatmap=heatmap, request_id=request_id)
                start = time.perf_counter()
                plc.publish(f"{PREFIX}/cmd/infer", payload)
                reply = plc.reply(request_id)
                elapsed = (time.perf_counter() - start) * 1000
                round_trips.append(elapsed)
                # Paired with the engine time of this very request, so that load on the
                # machine does not masquerade as adapter overhead.
                overheads.append(elapsed - reply["inference_ms"])
            round_trips, overheads = round_trips[2:], overheads[2:]
            label = "with_heatmap" if heatmap else "no_heatmap"
            emit(
                f"mqtt.infer_round_trip_{label}",
                p50_ms=p50(round_trips),
                p95_ms=p(round_trips, 0.95),
                engine_alone_p50_ms=p50(engine_ms),
                engine_alone_p95_ms=p(engine_ms, 0.95),
                overhead_p95_ms=p(overheads, 0.95),
            )
            emit_target(
                f"mqtt.overhead_p50_{label}",
                p50(overheads),
                "<=",
                target,
                "ms",
                method="round trip minus the reply's own inference_ms",
            )

        n_burst = 20 if quick else 100
        ids = [f"burst-{uuid.uuid4()}" for _ in range(n_burst)]
        start = time.perf_counter()
        for request_id in ids:
            plc.publish(
                f"{PREFIX}/cmd/infer", infer_payload(png, heatmap=False, request_id=request_id)
            )
        wanted = set(ids)
        plc.wait_for(
            lambda t, b: isinstance(b, dict) and b.get("request_id") in wanted,
            count=n_burst,
            timeout=600,
        )
        seconds = time.perf_counter() - start
        emit(
            "mqtt.burst_throughput", requests=n_burst, seconds=seconds, per_second=n_burst / seconds
        )
    finally:
        plc.close()
        adapter.stop()
        agent.stop()

    log("spool write and flush")
    n_spool = 200 if quick else 2000
    body = b'{"ok": true, "score": 0.123, "pad": "' + b"x" * 900 + b'"}'
    spool_agent, spool_root = bench_agent(
        n_fit=1, size=112, agent_id="spool", mqtt={"enabled": True, "port": broker.port}
    )
    spool = Spool(spool_agent.settings.data_root / "spool" / "mqtt", 1 << 30)
    start = time.perf_counter()
    for _ in range(n_spool):
        spool.append("bdi/spool/result/infer", body, expiry_s=3600)
    write_s = time.perf_counter() - start
    emit("mqtt.spool_write", messages=n_spool, per_second=n_spool / write_s)
    flusher = create(spool_agent.settings, spool_agent)
    start = time.perf_counter()
    flusher.start()
    wait_connected(spool_agent, timeout=600)
    flush_s = time.perf_counter() - start
    emit(
        "mqtt.spool_flush", messages=n_spool, per_second=n_spool / flush_s, left=flusher.spool.size
    )
    flusher.stop()
    spool_agent.stop()
    broker.stop()
    for folder in (work, root, spool_root):
        shutil.rmtree(folder, ignore_errors=True)
