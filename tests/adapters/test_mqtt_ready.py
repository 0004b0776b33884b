"""``bdi-agent run`` says ``online`` only when it can inspect (contract section 5).

A PLC that sends a command the moment it sees the agent's first retained status gets it
served, not ``busy``: ``loading`` while the model loads (commands wait in the queue),
``online`` once it is ready. Weights that cannot be loaded say ``degraded``, with the
``health`` body (and its reason) retained beside it.
"""

from __future__ import annotations

import json
from pathlib import Path

from agent.demo.discs import encode_png, make_set
from tests.adapters.mqtt_support import Broker, Client
from tests.reliability.fault_support import HttpAgent
from tests.reliability.isolation_support import ask, b64

AGENT = "ready"
PREFIX = f"bdi/{AGENT}"
ROI = {"role_id": "Inspection", "roi_id": "Inspection_1"}


def statuses(watcher: Client) -> list[str]:
    return [body for topic, body, _ in list(watcher.messages) if topic == f"{PREFIX}/status"]


def start_agent(data: Path, broker: Broker, **env: str) -> HttpAgent:
    return HttpAgent(
        data,
        BDI_AGENT_ID=AGENT,
        BDI_INPUT_SIZE="112",
        BDI_MQTT__ENABLED="true",
        BDI_MQTT__PORT=str(broker.port),
        **env,
    )


def test_a_command_sent_at_the_first_status_is_served(fresh_broker: Broker, tmp_path: Path) -> None:
    images = [b64(encode_png(d.image)) for d in make_set(seed=3, n_ok=4, size=112)]
    watcher = Client(fresh_broker.port, client_id="plc", subscribe=(f"{PREFIX}/#",))
    # The defaults: a fresh data root runs the runtime trial, which happens while loading.
    agent = start_agent(tmp_path / "data", fresh_broker, BDI_RUNTIME="auto", BDI_PRECISION="auto")
    try:
        _, first, _ = watcher.wait_for(lambda t, b: t == f"{PREFIX}/status", timeout=120)[0]
        assert first == "loading", first
        # Sent at once, whatever the model is doing: it waits for the model, then runs.
        fitted = ask(watcher, PREFIX, "fit_ok", **ROI, mm_per_px=0.2, images=images[:3])
        assert fitted["ok"], fitted
        watcher.wait_for(lambda t, b: t == f"{PREFIX}/status" and b == "online", timeout=120)
        verdict = ask(watcher, PREFIX, "infer", **ROI, mm_per_px=0.2, image=images[3])
        assert verdict["ok"] and isinstance(verdict["score"], float), verdict
        seen = statuses(watcher)
        assert seen[seen.index("online") :].count("loading") == 0, seen  # never back
        late = Client(fresh_broker.port, client_id="late", subscribe=(f"{PREFIX}/health",))
        try:
            _, health, _ = late.wait_for(lambda t, b: True, timeout=30)[0]
            assert health["status"] == "ok" and health["weights"] == "random", health
            assert "set by configuration" not in health["runtime_reason"], health  # a trial
        finally:
            late.close()
    finally:
        watcher.close()
        assert agent.stop() == 0, agent.output()


def test_weights_that_cannot_load_say_degraded_with_the_reason(
    fresh_broker: Broker, tmp_path: Path
) -> None:
    missing = tmp_path / "no-such-weights.safetensors"
    watcher = Client(fresh_broker.port, client_id="scada", subscribe=(f"{PREFIX}/#",))
    agent = start_agent(tmp_path / "data", fresh_broker, BDI_BACKBONE_WEIGHTS=str(missing))
    try:
        watcher.wait_for(lambda t, b: t == f"{PREFIX}/status" and b == "degraded", timeout=120)
        _, health, _ = watcher.wait_for(
            lambda t, b: t == f"{PREFIX}/health" and b["status"] == "error", timeout=30
        )[0]
        assert str(missing) in health["reason"] or "weights" in health["reason"], health
        refused = ask(watcher, PREFIX, "infer", **ROI, mm_per_px=0.2, image=b64(b"x"))
        assert refused["error"]["kind"] in ("busy", "bad_request"), refused
        assert json.dumps(health)  # the retained body is plain JSON
    finally:
        watcher.close()
        agent.stop()
