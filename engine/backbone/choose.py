"""Which runtime and precision serve: a short timed trial behind a fidelity gate.

Every candidate that the settings allow, the hardware runs natively and the install
provides is built (exported where needed), checked against torch fp32 on a reference
batch (the fidelity gate: patch-feature cosine mean >= 0.999 and min >= 0.99) and timed
at batch 1 at the configured input size; the fastest that passes serves. The choice is
remembered in the runtime folder, keyed by everything that could change it (CPU/GPU
model, weights, input size, layers, threads, library versions, the settings), so the
trial runs once per machine and configuration, and agents sharing the folder share it.
"""

from __future__ import annotations

import hashlib
import json
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from engine.atomic import atomic_write_json
from engine.backbone.artefacts import Artefacts, library_versions
from engine.backbone.hardware import Hardware
from engine.backbone.runners import OnnxRunner, OpenVinoRunner, Runner, TorchRunner
from engine.errors import EngineError

RUNTIMES = ("torch", "onnxruntime", "openvino")
PRECISIONS = ("fp32", "bf16", "fp16", "int8")
GATE_MEAN, GATE_MIN = 0.999, 0.99


@dataclass(frozen=True)
class Candidate:
    runtime: str
    precision: str

    @property
    def label(self) -> str:
        return f"{self.runtime} {self.precision}"


REFERENCE = Candidate("torch", "fp32")


@dataclass
class TrialRow:
    """One candidate's outcome. status: chosen | passed | failed_gate | unavailable |
    unsupported | error."""

    runtime: str
    precision: str
    status: str
    reason: str = ""
    ms: float | None = None  # median backbone ms, batch 1, input_size x input_size
    ratio: float | None = None  # ms / torch fp32 ms in the same trial
    cos_mean: float | None = None
    cos_min: float | None = None
    build_s: float | None = None  # export and session set-up


@dataclass
class Choice:
    runtime: str
    precision: str
    reason: str  # e.g. "onnxruntime int8: 1.6x faster than torch fp32 on <CPU>, cosine 0.9999"
    source: str  # "trial" | "remembered" | "settings"
    rows: list[TrialRow] = field(default_factory=list)
    key: str = ""
    trial_s: float | None = None  # the whole trial, building the exports included
    build_s: float | None = None  # of which exporting and setting up runtimes (once per weights)

    @property
    def candidate(self) -> Candidate:
        return Candidate(self.runtime, self.precision)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Choice:
        rows = [TrialRow(**row) for row in data.get("rows", [])]
        return cls(**{**data, "rows": rows})


@dataclass(frozen=True)
class TrialSetup:
    """What the trial needs besides the model: settings, hardware, where artefacts go."""

    hardware: Hardware
    runtime: str = "auto"
    precision: str = "auto"
    layers: tuple[int, ...] = (-1,)
    input_size: int = 448
    threads: int = 1
    folder: Path | None = None  # artefacts and remembered choices; None: a temp folder
    budget_s: float = 30.0  # timing across every candidate (building comes on top)
    weights_sha256: str = ""


class Unavailable(EngineError):
    """A candidate this install or this hardware cannot run (a missing extra, no GPU)."""


# -- which candidates -------------------------------------------------------------------


def offered(runtime: str, hw: Hardware) -> tuple[str, ...]:
    """Precisions ``runtime`` can run on this device at all."""
    if runtime == "torch":
        return ("fp32", "bf16", "fp16") if hw.on_gpu else ("fp32", "bf16")
    if runtime == "onnxruntime":
        return ("fp32",) if hw.on_gpu else ("fp32", "int8")
    return () if hw.on_gpu else ("fp32", "int8")  # openvino: its CPU plugin


def candidates(setup: TrialSetup) -> tuple[list[Candidate], list[TrialRow]]:
    """Candidates the settings allow, the reference first, and a row for each one left
    out with its reason. ``auto`` precision takes only what the hardware runs natively;
    a precision set explicitly is honoured wherever the runtime offers it."""
    hw, chosen, skipped = setup.hardware, [], []
    for runtime in RUNTIMES:
        if setup.runtime not in ("auto", runtime):
            continue
        for precision in PRECISIONS:
            if setup.precision not in ("auto", precision):
                continue
            if precision not in offered(runtime, hw):
                if setup.precision != "auto":  # asked for by name: say why it cannot be
                    why = f"{runtime} does not offer {precision} on {hw.device}"
                    skipped.append(TrialRow(runtime, precision, "unsupported", why))
            elif setup.precision == "auto" and not hw.native(precision):
                why = f"no native {precision} on this {'GPU' if hw.on_gpu else 'CPU'}"
                skipped.append(TrialRow(runtime, precision, "unsupported", why))
            else:
                chosen.append(Candidate(runtime, precision))
    return chosen, skipped


# -- building one ------------------------------------------------------------------------


def build_runner(
    candidate: Candidate,
    model: Any,
    device: Any,
    setup: TrialSetup,
    artefacts: Artefacts,
    calibration: Callable[[], list[np.ndarray]],
) -> Runner:
    runtime, precision = candidate.runtime, candidate.precision
    if runtime == "torch":
        return TorchRunner(model, device, precision, setup.layers)
    if runtime == "onnxruntime":
        try:
            import onnxruntime as ort
        except ImportError:
            raise Unavailable("onnxruntime is not installed") from None
        provider = "CUDAExecutionProvider" if setup.hardware.on_gpu else "CPUExecutionProvider"
        if provider not in ort.get_available_providers():
            raise Unavailable(f"onnxruntime has no {provider} in this install")
        path = artefacts.onnx(precision)
        return OnnxRunner(model, path, precision, setup.threads, [provider])
    try:
        import openvino  # noqa: F401

        if precision == "int8":
            import nncf  # noqa: F401
    except ImportError as exc:
        raise Unavailable(f"{exc.name} is not installed (pip install '.[openvino]')") from None
    path = artefacts.openvino(precision, calibration)
    return OpenVinoRunner(model, path, precision, setup.threads)


# -- the gate and the clock ---------------------------------------------------------------


def fidelity(reference: list[np.ndarray], features: list[np.ndarray]) -> tuple[float, float]:
    """(mean, min) cosine of matching patch features, over every image's patches."""
    cos = []
    for ref, got in zip(reference, features, strict=True):
        a = ref.reshape(-1, ref.shape[-1]).astype(np.float64)
        b = got.reshape(-1, got.shape[-1]).astype(np.float64)
        norms = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
        cos.append((a * b).sum(axis=1) / np.maximum(norms, 1e-12))
    values = np.concatenate(cos)
    return float(values.mean()), float(values.min())


def passes(cos_mean: float, cos_min: float) -> bool:
    return cos_mean >= GATE_MEAN and cos_min >= GATE_MIN


def features_of(runner: Runner, batch: list[np.ndarray]) -> list[np.ndarray]:
    """One pass per image: the reference images may fall on different grids."""
    return [runner.run(x[None])[0] for x in batch]


def median_ms(runner: Runner, x: np.ndarray, budget_s: float) -> float:
    """Median of timed passes (the gate's passes warmed the runner up): as many as
    ``budget_s`` holds, judged from the first, 2 to 5."""
    times = []
    while True:
        start = time.perf_counter()
        runner.run(x)
        times.append(time.perf_counter() - start)
        if len(times) >= min(5, max(2, int(budget_s / times[0]))):
            return statistics.median(times) * 1000


# -- the remembered choice ----------------------------------------------------------------


def trial_key(setup: TrialSetup) -> str:
    hw = setup.hardware
    parts = {
        "cpu": hw.cpu_model,
        "gpu": hw.gpu_model,
        "device": hw.device,
        "weights": setup.weights_sha256,
        "input_size": setup.input_size,
        "layers": list(setup.layers),
        "threads": setup.threads,
        "runtime": setup.runtime,
        "precision": setup.precision,
        "versions": library_versions(),
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()


def choice_path(folder: Path, key: str) -> Path:
    return folder / f"choice-{key[:16]}.json"


def remembered(folder: Path | None, key: str) -> Choice | None:
    if folder is None:
        return None
    try:
        choice = Choice.from_json(json.loads(choice_path(folder, key).read_text()))
    except (OSError, ValueError, TypeError):
        return None  # none yet, or unreadable: the trial runs again
    return choice if choice.key == key else None


def remember(folder: Path | None, choice: Choice) -> None:
    if folder is not None:
        atomic_write_json(choice_path(folder, choice.key), choice.to_json())


def describe(row: TrialRow, hw: Hardware) -> str:
    where = f"this {'GPU' if hw.on_gpu else 'CPU'} ({hw.describe()})"
    speed = f"{1 / row.ratio:.2f}x the speed of torch fp32" if row.ratio else "timed alone"
    cosine = f", cosine {row.cos_mean:.4f}" if row.cos_mean is not None else ""
    return f"{row.runtime} {row.precision}: {speed} on {where}{cosine}"


def with_status(rows: list[TrialRow], chosen: Candidate) -> list[TrialRow]:
    return [
        replace(r, status="chosen") if Candidate(r.runtime, r.precision) == chosen else r
        for r in rows
    ]
