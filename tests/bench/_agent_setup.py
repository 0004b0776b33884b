"""An agent on a temporary data root with a fitted ROI, and the engine-alone timing that
adapter overheads are measured against (same process, same run)."""

from __future__ import annotations

import base64
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from agent.bootstrap import Agent, bootstrap
from agent.config import Settings
from agent.demo.discs import encode_png, make_set
from agent.logging import configure_logging
from agent.parsing import parse_command
from engine.keys import RoiKey
from engine.preprocess import decode_image
from engine.verdict import judge

ROI = {"role_id": "Inspection", "roi_id": "Inspection_1"}
SIZE = 448


def bench_agent(size: int = SIZE, n_fit: int = 10, **overrides: Any) -> tuple[Agent, Path]:
    # The agent's own log lines must not mix with the measurements on stdout.
    configure_logging("WARNING", sys.stderr)
    root = Path(tempfile.mkdtemp(prefix="bdi-bench-"))
    values: dict[str, Any] = {
        "data_root": root / "data",
        "backbone_weights": "random",
        "input_size": size,
        "rois_file": root / "none.yaml",
        "mqtt": {"enabled": False},
        "folders": {"enabled": False},
        "http": {"enabled": False},
        "queue_size": 1024,
    }
    values.update(overrides)
    agent = bootstrap(Settings(**values))
    agent.start(load_model=False)
    agent.load_model()
    pngs = [encode_png(d.image) for d in make_set(seed=101, n_ok=n_fit, size=size)]
    reply = agent.bus.execute(fit_command(pngs))
    assert reply.ok, reply.to_dict()
    return agent, root


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def fit_command(pngs: list[bytes]) -> Any:
    payload = {**ROI, "mm_per_px": 0.2, "images": [b64(p) for p in pngs]}
    return parse_command("fit_ok", payload, "bench")


def infer_payload(png: bytes, heatmap: bool = True, **extra: Any) -> dict[str, Any]:
    return {**ROI, "mm_per_px": 0.2, "image": b64(png), "heatmap": heatmap, **extra}


def test_pngs(n: int, size: int = SIZE, seed: int = 202) -> list[bytes]:
    return [encode_png(d.image) for d in make_set(seed=seed, n_ok=n, size=size)]


def engine_infer(agent: Agent, heatmap: bool = True) -> Callable[[bytes], None]:
    """One infer done directly on the engine: decode, backbone, kNN, map, regions, PNG."""
    services = agent.services
    key = RoiKey.of(ROI["role_id"], ROI["roi_id"])

    def run(png: bytes) -> None:
        memory = services.cache.get(key)
        assert memory is not None
        image = decode_image(png)
        prediction = services.core.predict(memory, [image], memory.info.shape)[0]
        judge(prediction, memory, services.models.load_calibration(key), 0.2, heatmap=heatmap)

    return run
