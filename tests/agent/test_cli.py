"""The ``bdi-agent`` CLI in real subprocesses, on a real data root."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

from agent.demo.discs import encode_png, make_set
from engine.keys import RoiKey
from engine.store import ModelStore
from tests.support import ROOT, cli_env


def write_discs(folder: Path, seed: int, n_ok: int, n_per_defect: int = 0) -> list[Path]:
    folder.mkdir(parents=True)
    paths = []
    for i, disc in enumerate(make_set(seed, n_ok, n_per_defect, size=224, kinds=("rust",))):
        path = folder / f"{i:03d}_{disc.kind}.png"
        path.write_bytes(encode_png(disc.image))
        paths.append(path)
    return paths


def bdi(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "agent", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
    )


def test_fit_calibrate_infer_manifest_at_a_terminal(tmp_path: Path) -> None:
    env = cli_env(tmp_path / "data")
    write_discs(tmp_path / "ok", seed=21, n_ok=8)
    roi = ["--role", "Insp", "--roi", "R1"]
    fit = bdi(["fit", str(tmp_path / "ok"), *roi, "--mm-per-px", "0.2"], env)
    assert fit.returncode == 0, fit.stderr
    body = json.loads(fit.stdout)
    assert body["ok_added"] == 8 and body["token_shape"] == [16, 16]
    assert "embedding: 8/8" in fit.stderr and "coreset:" in fit.stderr  # progress
    assert bdi(["calibrate", *roi], env).returncode == 0
    images = write_discs(tmp_path / "test", seed=22, n_ok=2, n_per_defect=1)
    infer = bdi(["infer", *map(str, images), *roi, "--mm-per-px", "0.2", "--no-heatmap"], env)
    assert infer.returncode == 0, infer.stderr
    lines = [json.loads(line) for line in infer.stdout.splitlines()]
    assert [line["image"] for line in lines] == [str(p) for p in images]
    assert all("score" in line and "heatmap_png_base64" not in line for line in lines)
    assert all(line["threshold"] is not None for line in lines)
    wrong = bdi(["infer", str(images[0]), *roi, "--mm-per-px", "0.5"], env)
    assert wrong.returncode == 1
    assert json.loads(wrong.stdout)["error"]["kind"] == "scale_mismatch"
    manifest = json.loads(bdi(["manifest", *roi], env).stdout)
    assert manifest["memory"]["exists"] and manifest["datasets"] == {"ok": 8, "ng": 0}


def test_a_bad_config_is_a_readable_error(tmp_path: Path) -> None:
    result = bdi(["health"], cli_env(tmp_path, BDI_MQTT__PORT="high"))
    assert result.returncode == 2 and "mqtt.port" in result.stderr


def test_sigterm_during_a_fit_finishes_it_and_exits_zero(tmp_path: Path) -> None:
    data = tmp_path / "data"
    write_discs(tmp_path / "ok", seed=23, n_ok=24)
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "agent",
            "fit",
            str(tmp_path / "ok"),
            "--role",
            "r",
            "--roi",
            "i",
            "--mm-per-px",
            "0.2",
        ],
        env=cli_env(data, BDI_MAX_BATCH="2"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )
    assert proc.stderr is not None
    for line in proc.stderr:
        if line.startswith("embedding: 2/24"):
            break
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0
    assert json.loads(out)["n_samples"] == 24
    memory = ModelStore(data / "models").load_memory(RoiKey.of("r", "i"))
    assert memory is not None and memory.info.n_samples == 24


def test_run_stops_cleanly_on_sigterm(tmp_path: Path) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "agent", "run"],
        env=cli_env(tmp_path / "data"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )
    assert proc.stdout is not None
    events, loaded = [], {}
    deadline = time.monotonic() + 120
    for line in proc.stdout:
        events.append(json.loads(line)["event"])
        if "model loaded" in events or time.monotonic() > deadline:
            loaded = json.loads(line)
            break
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=60)
    events += [json.loads(line)["event"] for line in out.splitlines()]
    assert proc.returncode == 0
    assert "starting" in events and "model loaded" in events and events[-1] == "stopped"
    # The start-up log names the runtime that serves and why (pinned here by cli_env).
    assert (loaded["runtime"], loaded["precision"]) == ("torch", "fp32")
    assert "set by configuration" in loaded["runtime_reason"]


def test_runtime_probe_prints_the_trial_and_agents_serve_its_choice(tmp_path: Path) -> None:
    env = cli_env(
        tmp_path / "data",
        BDI_RUNTIME="auto",
        BDI_PRECISION="fp32",  # every runtime at fp32: a real trial, no int8 to calibrate
        BDI_INPUT_SIZE="112",
        BDI_RUNTIME_TRIAL_S="2",
    )
    probe = bdi(["runtime", "probe"], env)
    assert probe.returncode == 0, probe.stderr
    lines = probe.stdout.splitlines()
    assert lines[0].split()[:3] == ["runtime", "precision", "status"]
    assert any(line.split()[:3] == ["torch", "fp32", "passed"] for line in lines) or any(
        line.split()[:3] == ["torch", "fp32", "chosen"] for line in lines
    )
    serving = next(line for line in lines if line.startswith("serving: "))
    assert "cosine" in serving and "the speed of torch fp32" in serving
    health = bdi(["health"], env)
    assert health.returncode == 0, health.stderr
    body = json.loads(health.stdout)
    assert f"serving: {body['runtime_reason']}" == serving
    records = list((tmp_path / "data" / "models" / "runtime").glob("choice-*.json"))
    assert len(records) == 1
