"""``make demo`` end to end: the demo (agent, camera, PLC) against a test broker, the
verdicts it publishes, and Ctrl-C stopping everything it started."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from tests.adapters.mqtt_support import Broker, Client, free_port
from tests.e2e.support import FrontDoor, alive, clean_env


def verdict_from(source: str) -> Callable[[str, Any], bool]:
    def match(topic: str, body: Any) -> bool:
        is_result = topic.endswith("/result/infer") and isinstance(body, dict)
        return is_result and body.get("source") == source

    return match


def test_demo_publishes_verdicts_and_stops_everything_on_ctrl_c(
    tmp_path: Path, fresh_broker: Broker
) -> None:
    watcher = Client(
        fresh_broker.port,
        client_id="e2e-watcher",
        subscribe=("bdi/+/result/#", "bdi/+/roi/+/+/last", "bdi/+/status"),
    )
    args = ["--mqtt-port", str(fresh_broker.port), "--http-port", str(free_port())]
    args += ["--data-root", str(tmp_path / "data-demo"), "--interval", "0.5"]
    args += ["--n-ok", "12", "--n-ng", "3"]  # a small fit: the plumbing is what counts here
    # torch pinned: the runtime trial is tested on its own (tests/engine/test_runtime.py)
    demo = FrontDoor("agent.demo", args, clean_env(BDI_RUNTIME="torch", BDI_PRECISION="fp32"))
    try:
        demo.wait_line(lambda line: "RANDOM DINOv2 weights" in line, 30)
        demo.wait_line(lambda line: "/docs" in line, 60)
        demo.wait_line(lambda line: "the line is running" in line, 150)
        # The PLC's own commands (source mqtt) and the camera's drops (source folder)
        # both come back as verdicts on MQTT, and the PLC prints them.
        for source in ("mqtt", "folder"):
            watcher.wait_for(verdict_from(source), timeout=60)
        last = watcher.wait_for(lambda topic, body: topic.endswith("/last"), timeout=10)
        _, verdict, _ = last[0]
        assert verdict["threshold"] is not None and isinstance(verdict["is_anomaly"], bool)
        demo.wait_line(lambda line: line.startswith("[plc] plc-0001 (PLC)"), 30)
        children = demo.started()
        assert set(children) == {"agent", "camera", "plc"}  # its broker was ours
        assert demo.interrupt() == 0, demo.output()
    finally:
        demo.kill()
        watcher.close()
    assert not any(alive(pid) for pid in children.values()), children
    assert "everything the demo started is stopped" in demo.output()
    statuses = [b for t, b, _ in watcher.messages if t == "bdi/demo/status"]
    assert statuses[-1] == "stopped"  # the agent said goodbye before the demo went
