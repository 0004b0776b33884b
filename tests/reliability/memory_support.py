"""An agent process under a stream of MQTT infers, and its resident memory.

``python -m agent run`` with only MQTT on, a real mosquitto, one fitted ROI, and a PLC that
keeps ``window`` infers in flight (each with a request id of its own and a heatmap in the
reply). ``stream`` can pause with nothing in flight, so two RSS readings compare the same
state: everything answered, every queue empty. Used by ``test_memory_flat.py`` and the
memory benchmark (``tests/bench/bench_memory.py``).

The PLC keeps no reply (the suite's ``Client`` keeps every message): only counts, and the
ids of replies that were not ``ok``.
"""

from __future__ import annotations

import base64
import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt

from agent.demo.discs import encode_png, make_set
from tests.adapters.mqtt_support import Broker
from tests.e2e.support import FrontDoor
from tests.support import cli_env

ROI = {"role_id": "Line", "roi_id": "Face"}
MM_PER_PX = 0.2
AGENT_ID = "mem"
PREFIX = f"bdi/{AGENT_ID}"
REPLY_TIMEOUT_S = 120.0


def crops(n: int, size: int, seed: int = 71) -> list[bytes]:
    return [encode_png(d.image) for d in make_set(seed=seed, n_ok=n, size=size)]


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


@dataclass
class Tally:
    """Replies by outcome; ``failed`` holds the first few that were not ``ok``."""

    ok: int = 0
    failed: list[str] = field(default_factory=list)
    errors: int = 0

    @property
    def answered(self) -> int:
        return self.ok + self.errors


class StreamedAgent:
    """The agent process, its broker and the streaming PLC; ``stop()`` ends all three."""

    def __init__(self, workdir: Path, input_size: int, **env: str) -> None:
        self.workdir = workdir
        self.broker = Broker(workdir / "mosquitto")
        self.input_size = input_size
        self.env = env
        self.agent: FrontDoor | None = None
        self.tally = Tally()
        self.sent = 0
        self._slots: threading.Semaphore | None = None
        self._status = ""
        self._replies: dict[str, dict[str, Any]] = {}  # only for ``ask``
        self._cond = threading.Condition()
        self.plc = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2, client_id="mem-plc", protocol=mqtt.MQTTv5
        )
        self.plc.on_message = self._on_message

    @property
    def pid(self) -> int:
        assert self.agent is not None
        return self.agent.proc.pid

    def rss_mb(self) -> float:
        return rss_mb(self.pid)

    def start(self, timeout: float = 180) -> None:
        self.broker.start()
        env = cli_env(
            self.workdir / "data",
            BDI_AGENT_ID=AGENT_ID,
            BDI_INPUT_SIZE=str(self.input_size),
            BDI_CORESET_MIN="64",
            BDI_MQTT__ENABLED="true",
            BDI_MQTT__PORT=str(self.broker.port),
            BDI_LOG_LEVEL="WARNING",
            **self.env,
        )
        self.agent = FrontDoor("agent", ["run"], env)
        self.plc.connect("127.0.0.1", self.broker.port)
        self.plc.subscribe(f"{PREFIX}/result/#", qos=1)
        self.plc.subscribe(f"{PREFIX}/status", qos=1)
        self.plc.loop_start()
        self._wait(lambda: self._status == "online", timeout, "the agent to say online")

    def stop(self) -> None:
        self.plc.loop_stop()
        self.plc.disconnect()
        if self.agent is not None and self.agent.proc.poll() is None:
            self.agent.proc.terminate()
            try:
                self.agent.proc.wait(timeout=60)
            except Exception:
                self.agent.proc.kill()
                self.agent.proc.wait(timeout=30)
        self.broker.stop()

    # -- requests ---------------------------------------------------------------------

    def ask(self, command: str, payload: dict[str, Any], timeout: float = 300) -> dict[str, Any]:
        """One command and its reply (set-up: the fit)."""
        request_id = f"ask-{command}-{time.monotonic_ns()}"
        with self._cond:
            self._replies[request_id] = {}
        self._publish(command, {**payload, "request_id": request_id})
        self._wait(lambda: bool(self._replies[request_id]), timeout, f"the {command} reply")
        with self._cond:
            return self._replies.pop(request_id)

    def fit(self, pngs: list[bytes]) -> None:
        images = [base64.b64encode(p).decode() for p in pngs]
        reply = self.ask("fit_ok", {**ROI, "mm_per_px": MM_PER_PX, "images": images})
        assert reply.get("ok"), reply

    def stream(
        self,
        pngs: list[bytes],
        count: int,
        window: int = 16,
        every: int = 0,
        progress: Callable[[int], None] | None = None,
    ) -> None:
        """``count`` more infers (heatmaps on), ``window`` in flight; returns once every
        one was answered. ``progress(answered)`` runs every ``every`` replies, each time
        with nothing in flight."""
        images = [base64.b64encode(p).decode() for p in pngs]
        self._slots = threading.Semaphore(window)
        start = self.tally.answered
        step = every or count
        for done in range(0, count, step):
            for _ in range(min(step, count - done)):
                if not self._slots.acquire(timeout=REPLY_TIMEOUT_S):
                    raise AssertionError(f"no reply for {REPLY_TIMEOUT_S} s; {self.tally}")
                image = images[self.sent % len(images)]
                payload = {**ROI, "mm_per_px": MM_PER_PX, "image": image}
                self._publish("infer", {**payload, "request_id": f"m-{self.sent}"})
                self.sent += 1
            target = start + done + min(step, count - done)

            def all_answered(target: int = target) -> bool:
                return self.tally.answered >= target

            self._wait(all_answered, REPLY_TIMEOUT_S, f"{target} replies")
            if progress is not None:
                progress(self.tally.answered)

    # -- plumbing -----------------------------------------------------------------------

    def _publish(self, command: str, payload: dict[str, Any]) -> None:
        data = json.dumps(payload).encode()
        info = self.plc.publish(f"{PREFIX}/cmd/{command}", data, qos=1)
        if info.rc != mqtt.MQTT_ERR_SUCCESS:
            raise AssertionError(f"publish refused: {info.rc}")

    def _on_message(self, client: Any, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        if msg.topic == f"{PREFIX}/status":
            with self._cond:
                self._status = msg.payload.decode()
                self._cond.notify_all()
            return
        body = json.loads(msg.payload)
        request_id = str(body.get("request_id"))
        with self._cond:
            if request_id in self._replies:
                self._replies[request_id] = body
            elif body.get("ok") and "heatmap_png_base64" in body:
                self.tally.ok += 1
            else:
                self.tally.errors += 1
                if len(self.tally.failed) < 5:
                    self.tally.failed.append(json.dumps(body)[:300])
            self._cond.notify_all()
        if self._slots is not None and request_id.startswith("m-"):
            self._slots.release()

    def _wait(self, done: Callable[[], bool], timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        with self._cond:
            while not done():
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    output = self.agent.output() if self.agent else ""
                    raise AssertionError(f"timed out waiting for {what}; agent output:\n{output}")
                if self.agent is not None and self.agent.proc.poll() is not None:
                    raise AssertionError(f"the agent exited:\n{self.agent.output()}")
                self._cond.wait(min(remaining, 0.5))
