"""Backbone runtimes side by side in one run: torch, ONNX Runtime, OpenVINO, the default.

For each runtime x precision (and ``auto``, what the agent serves by default): load,
export and trial time, RSS, backbone ms at batch 1 and 8 at 224 and 448 px, fidelity
(patch cosine) and image AUROC on the synthetic discs against torch fp32, and the agent's
infer total (decode, backbone, kNN, map, regions, PNG) at 448 px. Target on every
machine: infer total with the defaults <= 0.75x a torch fp32 forward measured in this
same run, AUROC within 0.005 of torch fp32.
``python -m tests.bench.run_all --only runtime [--quick]``.
"""

from __future__ import annotations

import gc
import os
import resource
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tests.bench._engine_worker import MM_PER_PX, THREADS
from tests.bench._measure import median
from tests.bench._report import emit, emit_target, log
from tests.bench.bench_engine import _cpu_field, _infer_all, _report_auroc

CANDIDATES = (
    ("torch", "fp32"),
    ("torch", "bf16"),
    ("onnxruntime", "fp32"),
    ("onnxruntime", "int8"),
    ("openvino", "fp32"),
    ("openvino", "int8"),
    ("auto", "auto"),
)
INPUT_SIZE = 448
TARGET_DEFAULT_RATIO = 0.75
TARGET_AUROC_DELTA = 0.005
SEED_TRAIN, SEED_TEST, SEED_BACKBONE = 1, 2, 3


@dataclass(frozen=True)
class Sizes:
    runs: int
    train_ok: int
    test_ok: int
    test_per_kind: int


FULL = Sizes(runs=5, train_ok=20, test_ok=20, test_per_kind=6)
QUICK = Sizes(runs=2, train_ok=6, test_ok=6, test_per_kind=2)


def main(quick: bool = False) -> None:
    import torch

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    torch.set_num_threads(THREADS)
    sizes = QUICK if quick else FULL
    flags = _cpu_field("flags").split()
    emit(
        "runtime.env",
        quick=quick,
        cpu_model=_cpu_field("model name"),
        cpu_bf16=[f for f in flags if "bf16" in f or "amx" in f],
        threads=THREADS,
        versions={name: _version(name) for name in ("torch", "onnxruntime", "openvino", "nncf")},
        loadavg=os.getloadavg(),
    )
    data = _data(sizes)
    with tempfile.TemporaryDirectory(prefix="bench-runtime-") as tmp:
        extractors = {}
        for runtime, precision in CANDIDATES:
            label = f"{runtime}-{precision}"
            log(f"runtime: load {label}")
            try:
                extractors[label] = _load(runtime, precision, Path(tmp) / label)
            except Exception as exc:  # a missing extra, a failed gate: reported, never hidden
                emit("runtime.unavailable", runtime=runtime, precision=precision, error=str(exc))
        # Interleaved, call by call: a machine whose load changes over the run slows every
        # runtime alike, so the ratios of this run stay fair.
        backbone = _backbone(extractors, data, sizes)
        inference = _inference(extractors, data)
        _compare(backbone, inference, {k: fx.extract(data["gate"]) for k, fx in extractors.items()})
        extractors.clear()
        gc.collect()
        _stressed_gate(Path(tmp))


def _data(sizes: Sizes) -> dict[str, Any]:
    from agent.demo.discs import encode_png, make_set
    from engine.patchcore import Sample

    train = make_set(SEED_TRAIN, sizes.train_ok)
    test = make_set(SEED_TEST, sizes.test_ok, sizes.test_per_kind)
    return {
        "samples": [Sample.from_bytes(encode_png(d.image)) for d in train],
        "shape": train[0].roi_shape,
        "pngs": [encode_png(d.image) for d in test],
        "kinds": [d.kind for d in test],
        "gate": np.stack([d.image for d in make_set(SEED_BACKBONE + 1, 4)]),
        "backbone": {
            size: np.stack([d.image for d in make_set(SEED_BACKBONE, 8, size=size)])
            for size in (224, 448)
        },
    }


def _load(runtime: str, precision: str, folder: Path) -> Any:
    from engine.features import BackboneConfig, FeatureExtractor

    config = BackboneConfig(
        weights="random",
        runtime=runtime,
        precision=precision,
        threads=THREADS,
        input_size=INPUT_SIZE,
        runtime_dir=folder,
    )
    started = time.perf_counter()
    extractor = FeatureExtractor(config)
    extractor.load()
    choice = extractor.choice
    own = next(
        (r for r in choice.rows if (r.runtime, r.precision) == (choice.runtime, choice.precision)),
        None,
    )
    emit(
        "runtime.load",
        label=f"{runtime}-{precision}",
        serving=extractor.runtime_id,
        source=choice.source,
        reason=choice.reason,
        load_s=time.perf_counter() - started,
        trial_s=choice.trial_s,
        build_s=own.build_s if own else None,
        rss_mib=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        trial=[
            {k: getattr(r, k) for k in ("runtime", "precision", "status", "ms", "ratio")}
            for r in choice.rows
        ]
        if choice.source == "trial"
        else None,
    )
    return extractor


def _backbone(
    extractors: dict[str, Any], data: dict[str, Any], sizes: Sizes
) -> dict[tuple[str, int, int], float]:
    """Median ms per call of ``extract`` at batch 1 and 8, 224 and 448 px."""
    times: dict[tuple[str, int, int], list[float]] = {}
    shapes = [(size, batch) for size in data["backbone"] for batch in (1, 8)]
    for extractor in extractors.values():  # warm-up at every shape
        for size, batch in shapes:
            extractor.extract(data["backbone"][size][:batch])
    for _ in range(sizes.runs):
        for label, extractor in extractors.items():
            for size, batch in shapes:
                images = data["backbone"][size][:batch]
                start = time.perf_counter()
                extractor.extract(images)
                elapsed = (time.perf_counter() - start) * 1000
                times.setdefault((label, size, batch), []).append(elapsed)
    out = {}
    for (label, size, batch), calls in times.items():
        out[(label, size, batch)] = median(calls)
        emit(
            "runtime.backbone_ms",
            value=median(calls),
            unit="ms per call",
            per_image=median(calls) / batch,
            label=label,
            size=size,
            batch=batch,
            runs=calls,
        )
    return out


def _inference(extractors: dict[str, Any], data: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The agent's per-image path (decode, predict, judge with a heatmap) on each runtime's
    own memory, image by image in turn; then each runtime's AUROC."""
    from agent.demo.discs import DEFECT_KINDS
    from engine.patchcore import PatchCore

    cores, memories = {}, {}
    for label, extractor in extractors.items():
        log(f"runtime: fit {label}")
        cores[label] = PatchCore(extractor)
        memories[label] = cores[label].fit(
            data["samples"], mm_per_px=MM_PER_PX, shape=data["shape"]
        )
    records: dict[str, list[dict[str, float]]] = {label: [] for label in extractors}
    for png in data["pngs"]:
        for label in extractors:
            records[label] += _infer_all(cores[label], memories[label], [png], data["shape"], 0)
    out = {}
    for label, rows in records.items():
        total = median([r["total"] for r in rows])
        emit("runtime.infer_total_ms", value=total, unit="ms", label=label, images=len(rows))
        scores = [r["score"] for r in rows]
        out[label] = {
            "infer_ms": total,
            "auroc": _report_auroc(scores, data["kinds"], DEFECT_KINDS, label),
        }
    return out


def _compare(
    backbone: dict[tuple[str, int, int], float],
    inference: dict[str, dict[str, Any]],
    features: dict[str, np.ndarray],
) -> None:
    reference = inference.get("torch-fp32")
    if reference is None:
        emit("runtime.error", error="torch fp32 did not run: nothing to compare with")
        return
    forward_ms = backbone[("torch-fp32", INPUT_SIZE, 1)]
    for label, result in inference.items():
        cos = _cosine(features["torch-fp32"], features[label])
        emit(
            "runtime.vs_torch_fp32",
            label=label,
            infer_total_over_fp32_forward=result["infer_ms"] / forward_ms,
            backbone_448_b1_ratio=backbone[(label, INPUT_SIZE, 1)] / forward_ms,
            backbone_448_b8_ratio=backbone[(label, INPUT_SIZE, 8)]
            / backbone[("torch-fp32", INPUT_SIZE, 8)],
            backbone_224_b1_ratio=backbone[(label, 224, 1)] / backbone[("torch-fp32", 224, 1)],
            cos_mean=float(cos.mean()),
            cos_min=float(cos.min()),
            auroc=result["auroc"]["all"],
            auroc_delta=result["auroc"]["all"] - reference["auroc"]["all"],
        )
    default = inference.get("auto-auto")
    emit_target(
        "runtime.default_infer_over_fp32_forward",
        default["infer_ms"] / forward_ms if default else None,
        "<=",
        TARGET_DEFAULT_RATIO,
        "ratio",
        torch_fp32_forward_ms=forward_ms,
        default_infer_total_ms=default["infer_ms"] if default else None,
    )
    emit_target(
        "runtime.default_auroc_vs_fp32",
        abs(default["auroc"]["all"] - reference["auroc"]["all"]) if default else None,
        "<=",
        TARGET_AUROC_DELTA,
        "abs AUROC difference",
    )


def _stressed_gate(folder: Path) -> None:
    """The gate on weights whose blocks count. Random DINOv2 blocks start scaled by 1e-5
    (LayerScale), so with the random weights above every runtime's features are nearly
    torch fp32's; pretrained weights are not so forgiving. With the scales set to 1, the
    trial shows which candidates such weights would still let through."""
    from safetensors.torch import save_file

    from engine.backbone.weights import build_vit
    from engine.features import BackboneConfig, FeatureExtractor

    model, _ = build_vit("random")
    for name, parameter in model.named_parameters():
        if name.endswith("gamma"):
            parameter.data.fill_(1.0)
    weights = folder / "stressed.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(weights))
    extractor = FeatureExtractor(
        BackboneConfig(
            weights=str(weights),
            threads=THREADS,
            input_size=INPUT_SIZE,
            runtime_dir=folder / "stressed",
        )
    )
    extractor.load()
    for row in extractor.choice.rows:
        emit(
            "runtime.stressed_gate",
            runtime=row.runtime,
            precision=row.precision,
            status=row.status,
            cos_mean=row.cos_mean,
            cos_min=row.cos_min,
            ratio=row.ratio,
            reason=row.reason,
        )


def _cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a, b = a.reshape(-1, a.shape[-1]), b.reshape(-1, b.shape[-1])
    return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


def _version(package: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(package)
    except PackageNotFoundError:
        return None
