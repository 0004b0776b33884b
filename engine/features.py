"""Patch features of DINOv2 ViT-S/14, on the runtime that serves best on this machine.

``FeatureExtractor`` owns the timm model (the weights come from ``engine.backbone.weights``)
and the runner chosen for it (``engine.backbone.trial``): torch, ONNX Runtime or
OpenVINO, at the precision that is fastest here among those shown to give the same
features as torch fp32. torch and timm are imported on first use so that importing the
engine stays cheap.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from engine.backbone.choose import Choice, TrialSetup
from engine.backbone.hardware import Hardware, detect
from engine.backbone.runners import Runner
from engine.backbone.weights import (
    HOW_TO_PROVIDE,
    HUB_REPO,
    MODEL_NAME,
    WeightsInfo,
    build_vit,
    cpu_threads,
)
from engine.errors import ModelUnavailable
from engine.preprocess import normalise

if TYPE_CHECKING:
    import torch

__all__ = ["HOW_TO_PROVIDE", "HUB_REPO", "MODEL_NAME", "BackboneConfig", "FeatureExtractor"]

ReferenceImages = Callable[[], Sequence[np.ndarray]]


@dataclass(frozen=True)
class BackboneConfig:
    weights: str = "hub"  # "hub" | "random" | path to a .pth/.safetensors file
    device: str = "auto"  # "auto" | "cpu" | "cuda" | "cuda:N"
    runtime: str = "auto"  # "auto" | "torch" | "onnxruntime" | "openvino"
    precision: str = "auto"  # "auto" | "fp32" | "bf16" | "fp16" | "int8"
    layers: tuple[int, ...] = (-1,)  # transformer blocks whose patch tokens are used
    threads: int | None = None  # CPU threads; None = every core
    input_size: int = 448
    runtime_dir: Path | None = None  # exported backbones and remembered choices
    trial_budget_s: float = 30.0


class FeatureExtractor:
    """Patch embeddings of RGB images: (N, H, W, 3) uint8 -> (N, H/14, W/14, C) float32.

    The model is built and its runtime chosen on the first call to ``load()`` (or
    ``extract()``); it is safe to call ``load()`` from several threads. ``reference_images``
    gives the fidelity gate real crops (a ROI's stored OK images) when there are any.
    """

    def __init__(
        self,
        config: BackboneConfig | None = None,
        reference_images: ReferenceImages | None = None,
        hardware: Hardware | None = None,
    ) -> None:
        self.config = config or BackboneConfig()
        self.reference_images = reference_images
        self._hardware = hardware  # None: detected (tests pass one to simulate a CPU)
        self._model: Any = None
        self._runner: Runner | None = None
        self._choice: Choice | None = None
        self._device: torch.device | None = None
        self._weights: WeightsInfo | None = None
        self._lock = threading.Lock()

    @property
    def loaded(self) -> bool:
        return self._runner is not None

    @property
    def weights(self) -> WeightsInfo:
        self.load()
        assert self._weights is not None
        return self._weights

    @property
    def device(self) -> str:
        self.load()
        return str(self._device)

    @property
    def choice(self) -> Choice:
        """The runtime and precision that serve, and why."""
        self.load()
        assert self._choice is not None
        return self._choice

    @property
    def runtime_id(self) -> str:
        """``torch-fp32``, ``onnxruntime-int8``, …: what memories record they were built with."""
        return f"{self.choice.runtime}-{self.choice.precision}"

    @property
    def feature_id(self) -> str:
        """Identifies the feature space: weights, input size, layers. Every runtime that
        serves passed the fidelity gate against torch fp32, so it shares this id."""
        cfg = self.config
        layers = ",".join(str(i) for i in cfg.layers)
        return f"{self.weights.sha256[:16]}-s{cfg.input_size}-l{layers}"

    @property
    def cache_id(self) -> str:
        """The embedding cache's key: the feature space and the runtime that computed it."""
        return f"{self.feature_id}-{self.runtime_id}"

    def load(self) -> None:
        with self._lock:
            if self._runner is None:
                self._build()

    def reselect(self) -> Choice:
        """Run the trial again, ignoring the remembered choice (``bdi-agent runtime probe``).
        Not loaded yet, the model is built without choosing first: one trial, not two."""
        with self._lock:
            if self._model is None:
                self._build_model()
            self._select(force=True)
        return self.choice

    def extract(self, images: np.ndarray) -> np.ndarray:
        """(N, H, W, 3) uint8 RGB, H and W multiples of 14 -> (N, H/14, W/14, C) float32."""
        self.load()
        assert self._runner is not None
        return self._runner.run(normalise(images))

    def _build(self) -> None:
        self._build_model()
        self._select(force=False)

    def _build_model(self) -> None:
        import torch

        device = resolve_device(self.config.device)
        if device.type == "cpu":
            torch.set_num_threads(cpu_threads(self.config.threads))
        model, weights = build_vit(self.config.weights)
        self._model, self._weights, self._device = model.to(device), weights, device

    def _select(self, force: bool) -> None:
        from engine.backbone.trial import select

        cfg, device = self.config, self._device
        assert self._weights is not None and device is not None
        setup = TrialSetup(
            hardware=self._hardware or detect(str(device)),
            runtime=cfg.runtime,
            precision=cfg.precision,
            layers=cfg.layers,
            input_size=cfg.input_size,
            threads=cpu_threads(cfg.threads),
            folder=cfg.runtime_dir,
            budget_s=cfg.trial_budget_s,
            weights_sha256=self._weights.sha256,
        )
        images = self.reference_images or tuple
        self._runner, self._choice = select(self._model, device, setup, images, force)


def resolve_device(spec: str) -> torch.device:
    import torch

    if spec in ("", "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if spec.startswith("cuda") and not torch.cuda.is_available():
        raise ModelUnavailable(f"device {spec!r} requested but CUDA is not available")
    return torch.device(spec)
