"""``make run``: the agent on this machine, with a broker if one is needed.

    python -m agent.run_local

Before starting ``python -m agent run`` it checks, and says, what a newcomer would
otherwise have to dig out of the log: whether DINOv2 weights are here (never asking
the network), whether an MQTT broker answers (starting a local mosquitto on 127.0.0.1
when none does and the binary exists; it is stopped again on exit), and whether the HTTP
port is free. Settings come from the usual places (``BDI_*``, ``configs/agent.yaml``).
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from agent.config import ConfigError, Settings, load_settings
from agent.demo.procs import (
    LOCAL_HOSTS,
    Supervisor,
    answers,
    hurry_on_signal,
    mosquitto_binary,
    port_free,
    start_local_broker,
    stop_like_ctrl_c,
)

RULE = "-" * 78


def say(message: str) -> None:
    print(f"run: {message}", flush=True)


@dataclass(frozen=True)
class WeightsCheck:
    found: bool
    label: str  # one line for the summary


def check_weights(settings: Settings) -> WeightsCheck:
    """Where the agent's weights would come from (the setting, else a default imported
    into the data root, else the hub), looking only at local files."""
    from agent.ops.weights import effective_weights
    from engine.backbone.weights import HUB_REPO

    choice = effective_weights(settings)
    if choice.spec == "random":
        return WeightsCheck(True, "RANDOM (BDI_BACKBONE_WEIGHTS=random): tests and demo only")
    if choice.spec == "hub":
        from huggingface_hub import try_to_load_from_cache

        cached = try_to_load_from_cache(HUB_REPO, "model.safetensors")
        if isinstance(cached, str):  # else None or the "known missing" sentinel
            return WeightsCheck(True, f"pretrained DINOv2, Hugging Face cache ({cached})")
        return WeightsCheck(False, f"{HUB_REPO} is not in the Hugging Face cache")
    if choice.source == "imported" and choice.record is None:
        return WeightsCheck(False, choice.detail)  # a broken weights/default.json
    path = Path(choice.spec).expanduser()
    if path.is_file():
        return WeightsCheck(True, f"{choice.detail}: {path}")
    return WeightsCheck(False, f"{choice.detail}: {path} does not exist")


def missing_weights_banner(check: WeightsCheck, http_url: str | None) -> list[str]:
    from engine.backbone.weights import HUB_REPO

    health = f"{http_url}/health" if http_url else "health"
    return [
        RULE,
        f"NO DINOv2 WEIGHTS: {check.label}.",
        "The agent starts anyway (MQTT, folders and HTTP come up) but cannot inspect:",
        f"{health} answers 503 and every inspection gets 'busy' until you provide them:",
        "  - import a checkpoint once (copied into the data root, then the default):",
        "      .venv/bin/bdi-agent weights import /path/to/dinov2_vits14.pth",
        "  - or name one:  BDI_BACKBONE_WEIGHTS=/path/to/dinov2_vits14.pth make run",
        "    (.pth or .safetensors, timm or Meta key layout)",
        f"  - or the Hugging Face cache (HF_HOME, default ~/.cache/huggingface) with {HUB_REPO}:",
        f"      hf download {HUB_REPO}   (on a machine with internet; copy the cache over)",
        "Unless HF_HUB_OFFLINE=1, the agent also tries the hub once (needs internet).",
        "Just want to see it work?  make demo   (random weights, a simulated line)",
        RULE,
    ]


@dataclass(frozen=True)
class MqttPlan:
    enabled: bool  # the agent's MQTT adapter stays on
    start_port: int | None  # start a local mosquitto on 127.0.0.1:<port>
    note: str


def plan_mqtt(settings: Settings, binary: str | None) -> MqttPlan:
    cfg = settings.mqtt
    where = f"{cfg.host}:{cfg.port}"
    if not cfg.enabled:
        return MqttPlan(False, None, "MQTT off: disabled by BDI_MQTT__ENABLED / configs/agent.yaml")
    if answers(cfg.host, cfg.port):
        return MqttPlan(True, None, f"MQTT on: the broker at {where} answers")
    if cfg.host not in LOCAL_HOSTS:
        return MqttPlan(
            True,
            None,
            f"MQTT on, but nothing answers at {where} yet: the agent keeps retrying and "
            "spools its replies until the broker is there",
        )
    if binary is None:
        return MqttPlan(
            False,
            None,
            f"MQTT off: nothing answers on {where} and mosquitto is not installed "
            "(Debian/Ubuntu: sudo apt-get install mosquitto; or set BDI_MQTT__HOST and "
            "BDI_MQTT__PORT to your broker)",
        )
    return MqttPlan(True, cfg.port, f"MQTT on: no broker on {where}, starting mosquitto there")


def main(argv: Sequence[str] | None = None) -> int:
    del argv  # no options: everything is a setting (BDI_*, configs/agent.yaml)
    try:
        settings = load_settings()
    except ConfigError as exc:
        say(str(exc))
        return 2
    http = settings.http
    http_url = f"http://{_url_host(http.host)}:{http.port}" if http.enabled else None
    if http.enabled and http.port and not port_free(http.host, http.port):
        say(
            f"HTTP port {http.host}:{http.port} is taken (another agent, or make demo?). "
            "Stop it, or choose another port: BDI_HTTP__PORT=8001 make run"
        )
        return 1
    weights = check_weights(settings)
    if not weights.found:
        for line in missing_weights_banner(weights, http_url):
            say(line)
    binary = mosquitto_binary()
    plan = plan_mqtt(settings, binary)
    env = dict(os.environ)
    env.setdefault("PYTHONUNBUFFERED", "1")
    if not plan.enabled:
        env["BDI_MQTT__ENABLED"] = "false"
    supervisor = Supervisor(say)
    stop_like_ctrl_c()
    try:
        say(plan.note)
        if plan.start_port is not None and binary is not None:
            start_local_broker(supervisor, binary, plan.start_port)
        _summary(settings, weights, plan, http_url)
        agent = supervisor.spawn("agent", [sys.executable, "-m", "agent", "run"], env=env)
        while agent.running():
            time.sleep(0.2)
        say(f"the agent exited with status {agent.proc.returncode}")
        return agent.proc.returncode or 0
    except KeyboardInterrupt:
        say("stopping (Ctrl-C again to stop at once)")
        return 0
    except RuntimeError as exc:  # the broker would not start
        say(str(exc))
        return 1
    finally:
        hurry_on_signal(supervisor)
        supervisor.stop_all()


def _summary(
    settings: Settings, weights: WeightsCheck, plan: MqttPlan, http_url: str | None
) -> None:
    cfg = settings.mqtt
    topics = f"{cfg.topic_prefix}/{settings.agent_id}"
    say(f"data root  {settings.data_root}/")
    if settings.folders.enabled:
        say(f"folders    drop ROI crops in {settings.data_root}/inbox/<role>/<roi>/infer/")
    else:
        say("folders    off (BDI_FOLDERS__ENABLED=false)")
    if http_url:
        say(f"HTTP       {http_url}   API docs: {http_url}/docs")
    else:
        say("HTTP       off (BDI_HTTP__ENABLED=false)")
    if plan.enabled:
        say(f"MQTT       {cfg.host}:{cfg.port}, commands on {topics}/cmd/<command>")
    say(f"weights    {weights.label}")
    say("Ctrl-C stops the agent (and a broker this started). Agent log (JSON lines):")


def _url_host(host: str) -> str:
    return "127.0.0.1" if host in ("0.0.0.0", "::", "") else host


if __name__ == "__main__":
    sys.exit(main())
