"""HTTP adapter benchmark: what the HTTP round trip of an ``infer`` adds to the engine.

A real uvicorn server (the agent's HTTP adapter on a free port) and a keep-alive httpx
client, like the GUI's ``HttpClient``. Each request's overhead is its round trip minus the
engine time the agent measured for that same request (``inference_ms``): multipart upload
and parsing, the bus and worker hand-off, JSON and the heatmap's base64 on the way back.
Synthetic 448-px discs (realistic upload and heatmap sizes), backbone input 224 px with
random weights (the engine's cost is subtracted, so its size only adds noise).

    python -m tests.bench.bench_http [--quick]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tests.bench._measure import median, percentile
from tests.bench._report import emit, emit_target, log

IMAGE_SIZE = 448
INPUT_SIZE = 224
THREADS = 2
MM_PER_PX = 0.2
TARGET_OVERHEAD_P50_MS = 10.0
ROI = {"role_id": "Bench", "roi_id": "ROI_1"}


def main(quick: bool = False) -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # random weights: never reach a model hub
    from agent.logging import configure_logging

    configure_logging("WARNING", sys.stderr)  # stdout carries the JSON lines only
    runs, warmup = (10, 2) if quick else (40, 5)
    with tempfile.TemporaryDirectory(prefix="bench-http-") as tmp:
        agent, adapter = _start(Path(tmp))
        try:
            _bench(agent, adapter.url, runs, warmup, quick)
        finally:
            adapter.stop()
            agent.stop()


def _start(data_root: Path) -> tuple[Any, Any]:
    from adapters.http.adapter import create
    from agent.bootstrap import bootstrap
    from agent.config import Settings

    settings = Settings(
        data_root=data_root,
        backbone_weights="random",
        input_size=INPUT_SIZE,
        precision="fp32",
        threads=THREADS,
        coreset_min=256,
        rois_file=data_root / "rois.yaml",
        mqtt={"enabled": False},
        folders={"enabled": False},
        http={"enabled": True, "port": 0},
    )
    agent = bootstrap(settings)
    agent.start(load_model=False)
    agent.load_model()
    adapter = create(settings, agent)
    adapter.start()
    return agent, adapter


def _bench(agent: Any, url: str, runs: int, warmup: int, quick: bool) -> None:
    import httpx

    from agent.demo.discs import encode_png, make_set

    train = [encode_png(d.image) for d in make_set(1, 8, size=IMAGE_SIZE)]
    test = [encode_png(d.image) for d in make_set(2, 4, size=IMAGE_SIZE)]
    form = {**ROI, "mm_per_px": str(MM_PER_PX)}
    with httpx.Client(base_url=url, timeout=120) as client:
        log(f"http: fit {len(train)} OK discs of {IMAGE_SIZE} px")
        parts = [("images", (f"{i}.png", png, "image/png")) for i, png in enumerate(train)]
        client.post("/fit_ok", data=form, files=parts).raise_for_status()
        for heatmap in (True, False):
            log(f"http: {runs} infers, heatmap={heatmap}")
            fields = {**form, "heatmap": "true" if heatmap else "false"}
            samples = _infers(client, fields, test, runs, warmup)
            _report(samples, heatmap, test, quick)
        _report_bus_baseline(agent, client, form, test, runs, warmup)


def _infers(
    client: Any, fields: dict[str, str], pngs: Sequence[bytes], runs: int, warmup: int
) -> list[tuple[float, float, int]]:
    """(round trip ms, engine ms, response bytes) per timed request."""
    out = []
    for i in range(warmup + runs):
        png = pngs[i % len(pngs)]
        start = time.perf_counter()
        response = client.post("/infer", data=fields, files={"image": ("roi.png", png)})
        elapsed = (time.perf_counter() - start) * 1000
        response.raise_for_status()
        if i >= warmup:
            out.append((elapsed, float(response.json()["inference_ms"]), len(response.content)))
    return out


def _report(
    samples: list[tuple[float, float, int]], heatmap: bool, pngs: Sequence[bytes], quick: bool
) -> None:
    overhead = [rt - engine for rt, engine, _ in samples]
    common = {
        "heatmap": heatmap,
        "runs": len(samples),
        "quick": quick,
        "image_px": IMAGE_SIZE,
        "input_size": INPUT_SIZE,
        "upload_bytes": round(sum(len(p) for p in pngs) / len(pngs)),
        "response_bytes": round(median([float(size) for *_, size in samples])),
        "round_trip_p50_ms": median([rt for rt, _, _ in samples]),
        "engine_p50_ms": median([engine for _, engine, _ in samples]),
    }
    name = "http.infer_overhead_p50_ms" + ("" if heatmap else ".no_heatmap")
    if heatmap:
        emit_target(name, median(overhead), "<=", TARGET_OVERHEAD_P50_MS, "ms", **common)
    else:
        emit(name, value=median(overhead), unit="ms", **common)
    emit(
        "http.infer_overhead_p95_ms" + ("" if heatmap else ".no_heatmap"),
        value=percentile(overhead, 0.95),
        unit="ms",
        heatmap=heatmap,
        runs=len(samples),
    )


def _report_bus_baseline(
    agent: Any, client: Any, form: dict[str, str], pngs: Sequence[bytes], runs: int, warmup: int
) -> None:
    """The same infers straight through the bus, interleaved with HTTP ones: the overhead
    seen from outside the agent, including what ``inference_ms`` does not cover."""
    from agent.parsing import parse_command

    bus_ms, http_ms = [], []
    for i in range(warmup + runs):
        png = pngs[i % len(pngs)]
        command = parse_command("infer", {**form, "image": png}, "bench")
        start = time.perf_counter()
        reply = agent.bus.execute(command, timeout=120)
        bus = (time.perf_counter() - start) * 1000
        assert reply.ok, reply.to_dict()
        start = time.perf_counter()
        client.post("/infer", data=form, files={"image": ("roi.png", png)}).raise_for_status()
        http = (time.perf_counter() - start) * 1000
        if i >= warmup:
            bus_ms.append(bus)
            http_ms.append(http)
    emit(
        "http.infer_round_trip_minus_bus_p50_ms",
        value=median(http_ms) - median(bus_ms),
        unit="ms",
        heatmap=True,
        http_p50_ms=median(http_ms),
        bus_p50_ms=median(bus_ms),
        http_p95_ms=percentile(http_ms, 0.95),
        bus_p95_ms=percentile(bus_ms, 0.95),
        runs=len(bus_ms),
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer runs, for a smoke run")
    main(quick=parser.parse_args().quick)
