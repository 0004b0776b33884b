"""``make demo``: the whole agent on a simulated line, in one terminal.

    python -m agent.demo [--mqtt-port N] [--http-port N] [--data-root data-demo]

It starts, each in its own process and stopped again by pid on Ctrl-C:

- a mosquitto on 127.0.0.1 (1883, or a free port when 1883 is taken), unless
  ``--mqtt-port`` names a broker to use instead;
- the agent (``python -m agent run``) with RANDOM DINOv2 weights, 224-px input and its
  own data root, so the demo never touches real models or data;
- then, once it has taught the agent its ROI over HTTP like the GUI does (OK discs,
  ``fit_ok``; a few defects, ``send_ng``; ``calibrate_ng``):
- a camera that drops synthetic crops (OK and defective) into the inbox, and
- a PLC that sends ``infer`` commands over MQTT and prints every verdict.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from agent.demo.agent_process import LogView, agent_env, prepare_data_root, start_agent
from agent.demo.http_client import AgentHttp
from agent.demo.line import AGENT_ID, MM_PER_PX, ROI_ID, ROLE_ID, SIZE, disc_png, discs
from agent.demo.procs import (
    Supervisor,
    answers,
    free_port,
    hurry_on_signal,
    mosquitto_binary,
    port_free,
    port_or_free,
    start_local_broker,
    stop_like_ctrl_c,
)

HOST = "127.0.0.1"


def say(message: str) -> None:
    print(f"demo: {message}", flush=True)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="make demo", description=__doc__)
    parser.add_argument("--data-root", type=Path, default=Path("data-demo"))
    parser.add_argument("--mqtt-host", default=HOST, help="with --mqtt-port: broker host")
    parser.add_argument("--mqtt-port", type=int, default=0, help="use this broker (no own)")
    parser.add_argument("--http-port", type=int, default=0, help="default 8000, else free")
    parser.add_argument("--interval", type=float, default=2.0, help="seconds between parts")
    parser.add_argument("--n-ok", type=int, default=40, help="OK discs to fit on")
    parser.add_argument("--n-ng", type=int, default=6, help="defective discs to calibrate")
    parser.add_argument("--duration", type=float, default=0, help="stop after S s (0: Ctrl-C)")
    parser.add_argument("--verbose", action="store_true", help="print every agent log line")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    root = args.data_root.absolute()
    say("DEMO: RANDOM DINOv2 weights (BDI_BACKBONE_WEIGHTS=random), 224-px input.")
    say("Verdicts show the plumbing, not real inspection quality; see make run for that.")
    discs()  # fail now, before anything starts, when the generator is missing
    supervisor = Supervisor(say)
    stop_like_ctrl_c()
    try:
        mqtt_port = start_broker(args, supervisor)
        http_port = args.http_port or port_or_free(HOST, 8000)
        if not args.http_port and http_port != 8000:
            say(f"port 8000 is taken (make run?): the demo's HTTP API uses {http_port}")
        if not port_free(HOST, http_port):
            raise RuntimeError(f"HTTP port {http_port} is taken; choose another: --http-port")
        prepare_data_root(root, mqtt_port is not None)
        env = agent_env(root, args.mqtt_host, mqtt_port, http_port)
        view = LogView(args.verbose, folder_verdicts=mqtt_port is None)
        agent = start_agent(supervisor, env, root, view)
        base_url = f"http://{HOST}:{http_port}"
        say(f"operators' console: {base_url}/ui/ (open it in a browser)")
        say(f"HTTP API on {base_url}; its documentation: {base_url}/docs")
        say(f"data root {root} (agent log: {root / 'agent.log'})")
        http = AgentHttp(base_url)
        health = http.wait_ready(180, agent.running)
        say(f"agent ready: weights={health.get('weights')} device={health.get('device')}")
        train(http, args.n_ok, args.n_ng)
        start_line(supervisor, args, root, mqtt_port)
        mqtt = f"MQTT {args.mqtt_host}:{mqtt_port}" if mqtt_port else "MQTT off"
        say(f"the line is running ({mqtt}, HTTP {HOST}:{http_port}, topics bdi/{AGENT_ID}/#).")
        say("Ctrl-C stops everything the demo started.")
        return watch(supervisor, args.duration)
    except KeyboardInterrupt:
        say("stopping")
        return 0
    except (RuntimeError, OSError) as exc:  # a broker or agent that would not come up
        say(f"cannot go on: {exc}")
        return 1
    finally:
        hurry_on_signal(supervisor)
        supervisor.stop_all()
        say("everything the demo started is stopped")


def start_broker(args: argparse.Namespace, supervisor: Supervisor) -> int | None:
    """The MQTT port the demo uses, or None when MQTT is off (and why, said)."""
    if args.mqtt_port:
        if not answers(args.mqtt_host, args.mqtt_port):
            raise RuntimeError(f"no broker answers on {args.mqtt_host}:{args.mqtt_port}")
        say(f"MQTT: using the broker at {args.mqtt_host}:{args.mqtt_port}")
        return int(args.mqtt_port)
    binary = mosquitto_binary()
    if binary is None:
        say(
            "MQTT off: mosquitto is not installed (Debian/Ubuntu: sudo apt-get install "
            "mosquitto), so there is no PLC: the agent's log shows the camera's verdicts. "
            "Or pass --mqtt-port to use a running broker."
        )
        return None
    port = 1883 if port_free(HOST, 1883) else free_port(HOST)
    if port != 1883:
        say(f"port 1883 is taken (another broker?): the demo's mosquitto uses {port}")
    args.mqtt_host = HOST
    start_local_broker(supervisor, binary, port)
    say(f"MQTT: mosquitto on {HOST}:{port}; watch it: mosquitto_sub -p {port} -t 'bdi/#' -v")
    return port


def train(http: AgentHttp, n_ok: int, n_ng: int) -> None:
    """What an operator does in the GUI: OK samples, fit, a few NG samples, calibrate.
    The demo's data root keeps the previous run: start from empty datasets."""
    for label in ("ok", "ng"):
        http.clear(ROLE_ID, ROI_ID, label)
    fields = {"role_id": ROLE_ID, "roi_id": ROI_ID, "mm_per_px": MM_PER_PX}
    say(f"teaching ROI {ROLE_ID}/{ROI_ID}: fit_ok with {n_ok} synthetic OK discs over HTTP...")
    start = time.monotonic()
    ok = [disc_png(1, i, None, SIZE) for i in range(n_ok)]
    fit = http.upload("/fit_ok", fields, ok)
    say(
        f"  fitted in {time.monotonic() - start:.1f} s: coreset {fit['coreset_size']} of "
        f"{fit['n_embeddings']} patches, token grid {fit['token_shape']}"
    )
    kinds = discs().DEFECT_KINDS
    ng = [disc_png(2, i, kinds[i % len(kinds)], SIZE) for i in range(n_ng)]
    if ng:
        http.upload("/send_ng", fields, ng)
    calibration = http.calibrate(ROLE_ID, ROI_ID)
    say(
        f"  calibrated on its OK samples and {len(ng)} defects: threshold "
        f"{calibration['threshold']:.3f} (OK mean {calibration['ok_mean']:.3f})"
    )


def start_line(
    supervisor: Supervisor, args: argparse.Namespace, root: Path, mqtt_port: int | None
) -> None:
    python = [sys.executable, "-m"]
    common = ["--interval", str(args.interval), "--size", str(SIZE)]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    supervisor.spawn(
        "camera",
        [*python, "agent.demo.camera", "--inbox", str(root / "inbox"), *common],
        env=env,
        stop_signal=signal.SIGTERM,
        grace_s=5,
    )
    if mqtt_port is None:
        return
    plc = ["--host", args.mqtt_host, "--port", str(mqtt_port), "--agent-id", AGENT_ID]
    supervisor.spawn(
        "plc",
        [*python, "agent.demo.plc", *plc, *common],
        env=env,
        stop_signal=signal.SIGTERM,
        grace_s=5,
    )


def watch(supervisor: Supervisor, duration: float) -> int:
    deadline = time.monotonic() + duration if duration else None
    while deadline is None or time.monotonic() < deadline:
        gone = supervisor.exited()
        if gone is not None:
            say(f"{gone.name} (pid {gone.pid}) exited with status {gone.proc.returncode}")
            return 1
        time.sleep(0.2)
    say(f"{duration:.0f} s are up")
    return 0


if __name__ == "__main__":
    sys.exit(main())
