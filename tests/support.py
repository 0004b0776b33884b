"""Helpers shared by test folders (fixtures live in conftest.py)."""

from __future__ import annotations

import base64
import os
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def cli_env(data_root: Path, **extra: str) -> dict[str, str]:
    """A ``bdi-agent`` subprocess's environment: offline, random weights unless overridden,
    224-px input, torch fp32 (no runtime trial), no adapters. A value of ``"<unset>"``
    removes that variable."""
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "HF_HUB_OFFLINE": "1",
        "BDI_DATA_ROOT": str(data_root),
        "BDI_BACKBONE_WEIGHTS": "random",
        "BDI_INPUT_SIZE": "224",
        "BDI_RUNTIME": "torch",
        "BDI_PRECISION": "fp32",
        "BDI_MQTT__ENABLED": "false",
        "BDI_FOLDERS__ENABLED": "false",
        "BDI_HTTP__ENABLED": "false",
        **extra,
    }
    return {k: v for k, v in env.items() if v != "<unset>"}


def b64(data: bytes) -> str:
    """Image bytes as the base64 text a JSON command carries."""
    return base64.b64encode(data).decode()
