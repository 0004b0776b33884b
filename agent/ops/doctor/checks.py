"""Doctor checks of this PC: legacy names, data root, weights, device, HTTP port."""

from __future__ import annotations

import errno
import json
import os
import shutil
import socket
import tempfile
import urllib.error
import urllib.request
import warnings
from pathlib import Path
from typing import Any

from agent.ops.doctor.check import FAIL, OK, WARN, Check, Context
from agent.ops.weights import cpu_extractor, describe_weights

FAIL_FREE_BYTES = 512 * 1024**2  # below this a fit or a dataset upload fails mid-write
WARN_FREE_BYTES = 2 * 1024**3
IMPORT_HINT = "copy the checkpoint to this PC and run `bdi-agent weights import FILE`"


def check_legacy_names(context: Context) -> list[Check]:
    from agent.config import LEGACY_NAMES

    used = context.settings.legacy_names_used
    if not used:
        return [Check("config", OK, "no legacy environment names in use")]
    renames = []
    for name in used:
        if name.startswith("BRAKEDISC_"):
            renames.append(f"{name} -> BDI_{name.removeprefix('BRAKEDISC_')}")
        elif name in LEGACY_NAMES:
            new = "BDI_" + "__".join(part.upper() for part in LEGACY_NAMES[name])
            renames.append(f"{name} -> {new}")
    return [
        Check(
            "config",
            WARN,
            f"legacy environment names in use: {', '.join(used)} (read only while the "
            "new name is unset)",
            "rename them: " + "; ".join(renames),
        )
    ]


def check_data_root(context: Context) -> list[Check]:
    settings = context.settings
    roots = [("data_root", settings.data_root, "BDI_DATA_ROOT")]
    if settings.models_dir is not None:
        roots.append(("models_dir", settings.models_dir, "BDI_MODELS_DIR"))
    return [_writable(name, Path(path), env) for name, path, env in roots]


def _writable(name: str, root: Path, env: str) -> Check:
    fix = (
        f"{env} must be a folder the agent's user can write: check that the disk is "
        "mounted read-write, not full, and owned by that user"
    )
    try:
        root.mkdir(parents=True, exist_ok=True)  # the agent creates it at start anyway
        fd, probe = tempfile.mkstemp(prefix=".doctor-", dir=root)
        try:
            os.write(fd, b"probe")
            os.fsync(fd)
        finally:
            os.close(fd)
            os.unlink(probe)
    except OSError as exc:
        reason = exc.strerror or str(exc)
        return Check(name, FAIL, f"{root} is not writable ({reason})", fix)
    free = shutil.disk_usage(root).free
    text = f"{root} is writable, {free / 1024**3:.1f} GiB free"
    if free < FAIL_FREE_BYTES:
        return Check(name, FAIL, text, "free disk space: fits and samples need room")
    if free < WARN_FREE_BYTES:
        return Check(name, WARN, text, "free disk space soon: datasets grow with each fit")
    return Check(name, OK, text)


def check_weights(context: Context) -> list[Check]:
    """Present and loadable (seed: 503 on /health = the model did not load)."""
    from engine.errors import ModelUnavailable

    settings = context.settings
    info = describe_weights(settings, load=False)
    if "error" in info:
        return [Check("weights", FAIL, info["error"], IMPORT_HINT)]
    if context.extractor is None:
        extractor = cpu_extractor(settings, info["spec"])
        try:
            extractor.load()
        except ModelUnavailable as exc:
            return [Check("weights", FAIL, str(exc), IMPORT_HINT)]
        context.extractor = extractor
    weights = context.extractor.weights
    text = f"{weights.label}, sha256 {weights.sha256[:16]}… from {info['detail']}"
    if weights.label == "random":
        return [
            Check(
                "weights",
                WARN,
                text + ": random weights, scores mean nothing (tests and demos only)",
                f"{IMPORT_HINT}, and unset BDI_BACKBONE_WEIGHTS",
            )
        ]
    return [Check("weights", OK, text)]


def check_device(context: Context) -> list[Check]:
    """Seed: "GPU no detectada" -> torch.cuda.is_available() is False, and why."""
    import torch

    spec = context.settings.device
    index = spec.partition(":")[2]
    if spec not in ("", "auto", "cpu", "cuda") and not (
        spec.startswith("cuda:") and index.isdigit()
    ):
        return [
            Check(
                "device",
                FAIL,
                f"BDI_DEVICE={spec!r} is not a device",
                "BDI_DEVICE is auto, cpu, cuda or cuda:N",
            )
        ]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        available = torch.cuda.is_available()
    if available:
        count = torch.cuda.device_count()
        names = ", ".join(torch.cuda.get_device_name(i) for i in range(count))
        if index and int(index) >= count:
            return [
                Check(
                    "device",
                    FAIL,
                    f"BDI_DEVICE={spec} but only {count} GPU(s): {names}",
                    "set BDI_DEVICE=cuda or cuda:0",
                )
            ]
        if spec == "cpu":
            return [Check("device", OK, f"cpu (BDI_DEVICE=cpu) although CUDA has {names}")]
        return [Check("device", OK, f"cuda: {names} (torch {torch.__version__})")]
    why = _why_no_cuda(torch, [str(w.message) for w in caught])
    fix = (
        "for the GPU: install the CUDA build of PyTorch matching the NVIDIA driver "
        "(nvidia-smi shows the driver); to run on the CPU on purpose: BDI_DEVICE=cpu"
    )
    if spec.startswith("cuda"):
        return [Check("device", FAIL, f"BDI_DEVICE={spec} but CUDA is not available: {why}", fix)]
    if spec != "cpu":  # auto
        return [Check("device", WARN, f"CUDA not available: {why}; running on the CPU", fix)]
    return [Check("device", OK, f"cpu (BDI_DEVICE=cpu); CUDA not available: {why}")]


def _why_no_cuda(torch: Any, warned: list[str]) -> str:
    if torch.version.cuda is None:
        return f"this PyTorch ({torch.__version__}) is a CPU-only build"
    if os.environ.get("CUDA_VISIBLE_DEVICES", None) in ("", "-1"):
        return "CUDA_VISIBLE_DEVICES hides every GPU"
    if not Path("/proc/driver/nvidia").exists() and os.name == "posix":
        return "no NVIDIA driver is loaded (no /proc/driver/nvidia)"
    detail = warned[0].splitlines()[0][:200] if warned else "no GPU visible to CUDA"
    return f"{detail} (PyTorch built for CUDA {torch.version.cuda})"


def check_http_port(context: Context) -> list[Check]:
    http = context.settings.http
    if not http.enabled:
        return [Check("http_port", OK, "HTTP adapter disabled (BDI_HTTP__ENABLED=false)")]
    if http.port == 0:
        return [Check("http_port", OK, "port 0: the agent takes any free port")]
    where = f"{http.host}:{http.port}"
    family = socket.AF_INET6 if ":" in http.host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds
        try:
            sock.bind((http.host, http.port))
        except OSError as exc:
            return [_port_problem(where, http.host, http.port, exc)]
    return [Check("http_port", OK, f"{where} is free")]


def _port_problem(where: str, host: str, port: int, exc: OSError) -> Check:
    if exc.errno == errno.EADDRINUSE:
        status = _agent_health(host, port)
        if status is not None:
            return Check("http_port", OK, f"{where} is served by a running agent ({status})")
        return Check(
            "http_port",
            FAIL,
            f"{where} is in use by another program",
            f"stop it (`ss -ltnp 'sport = :{port}'` names it) or set BDI_HTTP__PORT",
        )
    if exc.errno == errno.EADDRNOTAVAIL:
        return Check(
            "http_port",
            FAIL,
            f"{host} is not an address of this PC",
            "set BDI_HTTP__HOST to 127.0.0.1, 0.0.0.0 or one of this PC's addresses",
        )
    if exc.errno == errno.EACCES:
        return Check(
            "http_port",
            FAIL,
            f"{where}: ports below 1024 need privileges",
            "set BDI_HTTP__PORT to 1024 or above (8000 by default)",
        )
    return Check(
        "http_port",
        FAIL,
        f"{where} cannot be bound ({exc.strerror or exc})",
        "set BDI_HTTP__HOST / BDI_HTTP__PORT",
    )


def _agent_health(host: str, port: int) -> str | None:
    """The health status when a bdi-agent answers on the port, else None."""
    target = "127.0.0.1" if host in ("0.0.0.0", "::", "") else host
    if ":" in target:
        target = f"[{target}]"
    try:
        with urllib.request.urlopen(f"http://{target}:{port}/health", timeout=2) as reply:
            body = reply.read()
    except urllib.error.HTTPError as exc:  # 503 while loading: still our agent
        body = exc.read()
    except (OSError, ValueError):
        return None
    try:
        data = json.loads(body)
    except ValueError:
        return None
    if isinstance(data, dict) and "status" in data and "weights" in data:
        return f"health: {data['status']}"
    return None
