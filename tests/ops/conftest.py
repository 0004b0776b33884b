"""Fixtures of the operations tests: checkpoints on disk, a fitted ROI, the CLI."""

from __future__ import annotations

import base64
import io
import subprocess
import sys
import tarfile
from pathlib import Path
from typing import Any

import pytest

from agent.bootstrap import Agent
from agent.config import Settings
from agent.parsing import parse_command
from agent.replies import Reply
from tests.conftest import agent_settings

MODEL_NAME = "vit_small_patch14_dinov2.lvd142m"


def send(agent: Agent, name: str, **payload: Any) -> Reply:
    reply = agent.bus.execute(parse_command(name, payload, "test"), timeout=120)
    assert reply.ok, reply.to_dict()
    return reply


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def fit_roi(agent: Agent, pngs: list[bytes], role: str = "Insp", roi: str = "R1") -> None:
    """Fit and self-calibrate one ROI through the agent's own bus."""
    send(agent, "fit_ok", role_id=role, roi_id=roi, mm_per_px=0.2, images=[b64(p) for p in pngs])
    send(agent, "calibrate_ng", role_id=role, roi_id=roi)


def bdi(args: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    # cwd: a scratch folder, so no configs/agent.yaml of the source tree is read.
    return subprocess.run(
        [sys.executable, "-m", "agent", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        cwd=cwd,
    )


@pytest.fixture(scope="session")
def other_state() -> dict[str, Any]:
    """ViT-S/14 tensors other than the agent's seeded random ones (seed 123)."""
    import timm
    import torch

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(123)
        model = timm.create_model(MODEL_NAME, pretrained=False, num_classes=0)
    return {k: v.clone() for k, v in model.state_dict().items()}


@pytest.fixture(scope="session")
def checkpoints(
    tmp_path_factory: pytest.TempPathFactory, other_state: dict[str, Any]
) -> dict[str, Path]:
    """The same weights in each layout an operator may bring."""
    import torch
    from safetensors.torch import save_file

    folder = tmp_path_factory.mktemp("checkpoints")
    paths = {
        "timm-pth": folder / "vit_small_dinov2.pth",
        "meta-pth": folder / "dinov2_vits14_pretrain.pth",
        "safetensors": folder / "model.safetensors",
    }
    torch.save(other_state, paths["timm-pth"])
    # Meta's layout: the same keys plus mask_token, here inside a trainer's wrapper.
    meta = {f"backbone.{k}": v for k, v in other_state.items()}
    meta["backbone.mask_token"] = torch.zeros(1, 384)
    torch.save({"teacher": meta}, paths["meta-pth"])
    save_file(other_state, str(paths["safetensors"]))
    return paths


def ops_settings(data_root: Path, **overrides: Any) -> Settings:
    """In-process settings like the CLI's: random weights, 224 px, no adapters, CPU."""
    return agent_settings(data_root, **{"device": "cpu", **overrides})


def write_tar(path: Path, files: dict[str, bytes]) -> Path:
    """A .tar.gz holding ``files`` (name -> bytes) exactly as named."""
    with tarfile.open(path, "w:gz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path
