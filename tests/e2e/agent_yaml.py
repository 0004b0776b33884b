"""Renders ``configs/agent.yaml``: every setting of ``agent.config.Settings``, its default
and its description, with the environment variable that overrides it.

    python -m tests.e2e.agent_yaml > configs/agent.yaml

``test_configs.py`` checks the committed file against the settings model, so a new
setting or a changed default shows up as a failing test that names this command.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel
from pydantic.fields import FieldInfo

from agent.config import Settings

HEADER = """\
# BrakeDisc Inspector edge agent: every setting, with its default.
#
# Read from BDI_CONFIG (default: configs/agent.yaml under the working directory).
# Environment variables beat this file: BDI_<SETTING>, sections nested with "__"
# (mqtt.host is BDI_MQTT__HOST). The seeds' legacy names (BACKEND_DEVICE, INPUT_SIZE,
# PATCHCORE_CORES...) still work when the new name is not set; see agent/config.py.
# Relative paths are relative to the agent's working directory.
#
# Generated from agent/config.py; after changing a setting there, regenerate:
#   python -m tests.e2e.agent_yaml > configs/agent.yaml
"""
# Defaults computed at start-up: shown as a comment, never pinned in the file.
DYNAMIC = {"agent_id": "line1-cell3   # default: this machine's host name"}
SKIPPED = {"legacy_names_used"}  # bookkeeping, not a setting
SECTIONS = {
    "mqtt": "MQTT adapter (contract section 5): PLCs and line controllers",
    "mqtt.tls": "TLS to the broker",
    "folders": "folder adapter (contract section 6): the watched inbox, GUI dataset roots",
    "http": "HTTP adapter (contract section 7): the GUI's API, /docs, /metrics",
}
# What a one-line description cannot say, keyed by the setting's dotted path.
NOTES = {
    "backbone_weights": "hub: the Hugging Face cache, then the hub; random: demo/tests only",
    "device": "auto: the GPU when there is one",
    "runtime": "auto: a timed trial at first start (bdi-agent runtime probe re-runs it)",
    "precision": "auto: only what the hardware runs natively (bf16: AVX512-BF16/AMX or GPU)",
    "api_key": "better in the environment (BDI_API_KEY) than in a file",
    "mqtt.password": "better in the environment (BDI_MQTT__PASSWORD) than in a file",
    "mqtt.image_roots": "folders under which commands may name an image_path",
    "http.host": "0.0.0.0 serves the network; put nginx with TLS in front (deploy/)",
    "folders.polling": "needed on network shares (SMB/NFS), where inotify sees nothing",
    "folders.dataset_roots": "laid out <root>/<role_id>/<roi_id>/{ok,ng}/; never written",
}


def render() -> str:
    lines = HEADER.splitlines()
    _section(Settings, (), lines)
    return "\n".join(lines) + "\n"


def _section(model: type[BaseModel], path: tuple[str, ...], lines: list[str]) -> None:
    indent = "  " * len(path)
    for name, field in model.model_fields.items():
        if name in SKIPPED:
            continue
        annotation = field.annotation
        dotted = ".".join((*path, name))
        env = "BDI_" + "__".join(part.upper() for part in (*path, name))
        lines.append("")
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            lines.append(f"{indent}# {SECTIONS.get(dotted, name)} (env {env}__*)")
            lines.append(f"{indent}{name}:")
            _section(annotation, (*path, name), lines)
            continue
        lines.append(f"{indent}# {field.description or name} (env {env})")
        if dotted in NOTES:
            lines.append(f"{indent}# {NOTES[dotted]}")
        if name in DYNAMIC and not path:
            lines.append(f"{indent}# {name}: {DYNAMIC[name]}")
        else:
            lines.append(f"{indent}{name}: {_scalar(_default(field))}")


def _default(field: FieldInfo) -> Any:
    if field.default_factory is not None:
        return field.default_factory()  # type: ignore[call-arg]
    return field.default


def _scalar(value: Any) -> str:
    if isinstance(value, Path):
        value = str(value)
    elif isinstance(value, list):
        value = [str(v) if isinstance(v, Path) else v for v in value]
    text = yaml.safe_dump(value, default_flow_style=True, width=1000).strip()
    return text.removesuffix("...").strip()


if __name__ == "__main__":
    sys.stdout.write(render())
