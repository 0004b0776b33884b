"""The demo's PLC: asks for inspections over MQTT and prints every verdict that comes back.

    python -m agent.demo.plc --port 1883 [--agent-id demo] [--interval 2]

Each cycle it publishes an ``infer`` command with a synthetic crop (base64, no heatmap:
a PLC has small buffers) on ``bdi/<agent>/cmd/infer``. It listens to
``bdi/<agent>/result/infer``, where the agent answers it and also publishes the verdicts
of the camera's folder drops, to the ROI ``alert`` topic and to the agent's ``status``.
"""

from __future__ import annotations

import argparse
import base64
import json
import signal
import sys
import threading
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from types import FrameType
from typing import Any

import paho.mqtt.client as mqtt

from agent.demo.line import AGENT_ID, MM_PER_PX, add_mix_args, disc_png, mix_of, truth_of


class Plc:
    def __init__(self, host: str, port: int, prefix: str) -> None:
        self.prefix = prefix
        self.truth: dict[str, str] = {}  # our request ids -> what the part really is
        self.tally: Counter[str] = Counter()
        self.lock = threading.Lock()
        self.connected = threading.Event()
        self.client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2,
            client_id=f"demo-plc-{time.monotonic_ns()}",
            protocol=mqtt.MQTTv5,
        )
        self.client.on_connect = self._on_connect
        self.client.on_message = self._on_message
        self.client.connect_async(host, port)
        self.client.loop_start()

    def _on_connect(self, client: mqtt.Client, *args: Any) -> None:
        for leaf in ("result/infer", "roi/+/+/alert", "status"):
            client.subscribe(f"{self.prefix}/{leaf}", qos=1)
        self.connected.set()

    def send(self, request_id: str, truth: str, png: bytes, role: str, roi: str) -> None:
        with self.lock:
            self.truth[request_id] = truth
        command = {
            "request_id": request_id,
            "role_id": role,
            "roi_id": roi,
            "mm_per_px": MM_PER_PX,
            "image": base64.b64encode(png).decode("ascii"),
            "heatmap": False,
        }
        self.client.publish(f"{self.prefix}/cmd/infer", json.dumps(command), qos=1)

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        text = msg.payload.decode(errors="replace")
        if msg.topic.endswith("/status"):
            print(f"[plc] agent status: {text}", flush=True)
            return
        try:
            body = json.loads(text)
        except ValueError:
            return
        if msg.topic.endswith("/alert"):
            print(f"[plc] ALERT on {msg.topic.split('/')[-3:-1]}: {body}", flush=True)
        else:
            print(f"[plc] {self._verdict_line(body)}", flush=True)

    def _verdict_line(self, body: dict[str, Any]) -> str:
        request_id = str(body.get("request_id"))
        if body.get("source") == "folder":
            path = str(body.get("path", ""))
            who, truth = f"{Path(path).name} (camera)", truth_of(path)
        else:
            with self.lock:
                truth = self.truth.pop(request_id, None)
            who = f"{request_id} (PLC)"
        if not body.get("ok"):
            return f"{who}: error {body.get('error')}"
        score, anomaly = float(body.get("score", 0.0)), body.get("is_anomaly")
        if anomaly is None:
            return f"{who}: score {score:.3f} (ROI not calibrated: no verdict)"
        threshold = float(body["threshold"])
        n = len(body.get("regions", []))
        verdict = f"ANOMALY ({n} region{'s' if n != 1 else ''})" if anomaly else "OK"
        sign = ">" if score > threshold else "<="
        return (
            f"{who:<34} score {score:.3f} {sign} {threshold:.3f}  {verdict:<20} "
            f"truth {truth or '?':<9} {self._grade(truth, bool(anomaly))}"
        )

    def _grade(self, truth: str | None, anomaly: bool) -> str:
        if truth is None:
            return ""
        grade = "right"
        if truth == "ok" and anomaly:
            grade = "FALSE ALARM"
        elif truth != "ok" and not anomaly:
            grade = "missed"
        with self.lock:
            self.tally[grade] += 1
        return grade

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="demo-plc", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=1883)
    parser.add_argument("--agent-id", default=AGENT_ID)
    parser.add_argument("--topic-prefix", default="bdi")
    parser.add_argument("--count", type=int, default=0, help="stop after N parts (0: never)")
    add_mix_args(parser)
    args = parser.parse_args(argv)
    mix = mix_of(args)
    signal.signal(signal.SIGTERM, _interrupt)
    plc = Plc(args.host, args.port, f"{args.topic_prefix}/{args.agent_id}")
    index = 0
    try:
        if not plc.connected.wait(15):
            print(f"[plc] no broker at {args.host}:{args.port}", flush=True)
            return 1
        while not args.count or index < args.count:
            index += 1
            kind = mix.kind(index)
            png = disc_png(args.seed + 2000, index, kind, args.size)
            plc.send(f"plc-{index:04d}", kind or "ok", png, args.role, args.roi)
            time.sleep(args.interval)
    except KeyboardInterrupt:
        pass
    finally:
        plc.close()
    tally = ", ".join(f"{n} {grade}" for grade, n in sorted(plc.tally.items())) or "none"
    print(f"[plc] stopped after {index} parts; verdicts: {tally}", flush=True)
    return 0


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


if __name__ == "__main__":
    sys.exit(main())
