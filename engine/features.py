"""DINOv2 ViT-S/14 patch features through timm.

Weights come from exactly one place, named by ``BackboneConfig.weights``:
a ``.pth``/``.safetensors`` file (timm or Meta key layout), ``hub`` (the Hugging Face
cache, then the hub) or ``random`` (seeded random initialisation, for tests and the
demo only). A source that fails raises ``ModelUnavailable``; there is no fallback.
torch and timm are imported on first use so that importing the engine stays cheap.
"""

from __future__ import annotations

import hashlib
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from engine.errors import ModelUnavailable
from engine.preprocess import normalise

if TYPE_CHECKING:
    import torch

MODEL_NAME = "vit_small_patch14_dinov2.lvd142m"
HUB_REPO = "timm/vit_small_patch14_dinov2.lvd142m"
RANDOM_SEED = 0

HOW_TO_PROVIDE = (
    "provide DINOv2 ViT-S/14 weights: set BDI_BACKBONE_WEIGHTS to a .pth/.safetensors file "
    f"(timm or Meta layout), or put '{HUB_REPO}' in the Hugging Face cache (HF_HOME); "
    "BDI_BACKBONE_WEIGHTS=random runs with random weights (demo and tests only)"
)


@dataclass(frozen=True)
class BackboneConfig:
    weights: str = "hub"  # "hub" | "random" | path to a .pth/.safetensors file
    device: str = "auto"  # "auto" | "cpu" | "cuda" | "cuda:N"
    precision: str = "auto"  # "auto" (fp16 on GPU, bf16 on CPU) | "fp32" | "bf16" | "fp16"
    layers: tuple[int, ...] = (-1,)  # transformer blocks whose patch tokens are used
    threads: int | None = None  # CPU threads; None = every core
    input_size: int = 448


@dataclass(frozen=True)
class WeightsInfo:
    label: str  # "pretrained" | "file:<name>" | "random" (the contract's health field)
    sha256: str  # hash of the loaded tensors: memories are only valid with the same weights


class FeatureExtractor:
    """Patch embeddings of RGB images: (N, H, W, 3) uint8 -> (N, H/14, W/14, C) float32.

    The model is built on the first call to ``load()`` (or ``extract()``); it is safe
    to call ``load()`` from several threads.
    """

    def __init__(self, config: BackboneConfig | None = None) -> None:
        self.config = config or BackboneConfig()
        self._model: Any = None
        self._device: torch.device | None = None
        self._weights: WeightsInfo | None = None
        self._lock = threading.Lock()

    @property
    def loaded(self) -> bool:
        return self._model is not None

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
    def feature_id(self) -> str:
        """Identifies everything that changes an embedding: weights, input size, layers."""
        cfg = self.config
        layers = ",".join(str(i) for i in cfg.layers)
        return f"{self.weights.sha256[:16]}-s{cfg.input_size}-l{layers}"

    def load(self) -> None:
        with self._lock:
            if self._model is None:
                self._model, self._device, self._weights = _build(self.config)

    def extract(self, images: np.ndarray) -> np.ndarray:
        """(N, H, W, 3) uint8 RGB, H and W multiples of 14 -> (N, H/14, W/14, C) float32."""
        import torch

        self.load()
        assert self._device is not None
        x = torch.from_numpy(normalise(images)).to(self._device)
        dtype = _autocast_dtype(self.config.precision, self._device)
        with (
            torch.inference_mode(),
            torch.autocast(
                device_type=self._device.type,
                dtype=dtype or torch.float32,
                enabled=dtype is not None,
            ),
        ):
            maps = self._model.forward_intermediates(
                x,
                indices=list(self.config.layers),
                norm=True,
                output_fmt="NCHW",
                intermediates_only=True,
            )
        feats = torch.cat([m.float() for m in maps], dim=1)  # (N, C, h, w)
        return np.ascontiguousarray(feats.permute(0, 2, 3, 1).cpu().numpy())


def _autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    import torch

    if precision == "auto":
        precision = "fp16" if device.type == "cuda" else "bf16"
    table = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
    if precision not in table:
        raise ValueError(f"precision must be one of auto/fp32/bf16/fp16, got {precision!r}")
    if precision == "fp16" and device.type != "cuda":
        return torch.bfloat16  # fp16 matmuls on CPU are slow; bf16 is the CPU's half type
    return table[precision]


def resolve_device(spec: str) -> torch.device:
    import torch

    if spec in ("", "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if spec.startswith("cuda") and not torch.cuda.is_available():
        raise ModelUnavailable(f"device {spec!r} requested but CUDA is not available")
    return torch.device(spec)


def _build(config: BackboneConfig) -> tuple[Any, torch.device, WeightsInfo]:
    import timm
    import torch

    device = resolve_device(config.device)
    if device.type == "cpu":
        torch.set_num_threads(config.threads or os.cpu_count() or 1)
    with torch.random.fork_rng(devices=[]):
        # Seeded so that every process builds the same "random" weights: a memory fitted
        # by one agent stays valid for another sharing the data root.
        torch.manual_seed(RANDOM_SEED)
        model = timm.create_model(
            MODEL_NAME, pretrained=False, num_classes=0, dynamic_img_size=True
        )
    label = "random"
    if config.weights != "random":
        path, label = _locate_weights(config.weights)
        load_weights_file(model, path)
    model.eval().requires_grad_(False).to(device)
    return model, device, WeightsInfo(label=label, sha256=_tensor_hash(model))


def _locate_weights(spec: str) -> tuple[Path, str]:
    if spec == "hub":
        return _hub_weights(), "pretrained"
    path = Path(spec).expanduser()
    if not path.is_file():
        raise ModelUnavailable(f"weights file {path} not found; {HOW_TO_PROVIDE}")
    return path, f"file:{path.name}"


def _hub_weights() -> Path:
    try:
        from huggingface_hub import hf_hub_download
    except ImportError as exc:  # pragma: no cover - a dependency of timm
        raise ModelUnavailable(f"huggingface_hub missing ({exc}); {HOW_TO_PROVIDE}") from None
    try:
        return Path(hf_hub_download(HUB_REPO, "model.safetensors", local_files_only=True))
    except Exception:
        pass  # not cached: try the hub itself below
    try:
        return Path(hf_hub_download(HUB_REPO, "model.safetensors"))
    except Exception as exc:
        raise ModelUnavailable(
            f"DINOv2 weights are not in the Hugging Face cache and the hub is unreachable "
            f"({type(exc).__name__}); {HOW_TO_PROVIDE}"
        ) from None


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Tensors of a checkpoint file, unwrapped from training wrappers and prefixes."""
    import torch

    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            raw: Any = load_file(str(path))
        else:
            raw = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ModelUnavailable(
            f"weights file {path.name} could not be read ({type(exc).__name__}: {exc}); "
            f"{HOW_TO_PROVIDE}"
        ) from None
    for wrapper in ("teacher", "model", "state_dict"):
        if isinstance(raw, dict) and isinstance(raw.get(wrapper), dict):
            raw = raw[wrapper]
    if not isinstance(raw, dict):
        raise ModelUnavailable(f"weights file {path.name} holds no state dict; {HOW_TO_PROVIDE}")
    out = {}
    for key, value in raw.items():
        for prefix in ("module.", "backbone."):
            key = key.removeprefix(prefix)
        out[key] = value
    return out


def load_weights_file(model: Any, path: Path) -> None:
    """Load a timm- or Meta-layout DINOv2 ViT-S/14 checkpoint, every key and shape checked."""
    from timm.models.vision_transformer import checkpoint_filter_fn

    state = read_state_dict(path)
    patch = state.get("patch_embed.proj.weight")
    if patch is None or tuple(patch.shape) != (384, 3, 14, 14):
        # timm would silently resample another patch size: refuse it instead.
        found = "missing" if patch is None else list(patch.shape)
        raise ModelUnavailable(
            f"weights file {path.name} is not a DINOv2 ViT-S/14 checkpoint "
            f"(patch_embed.proj.weight {found}, expected [384, 3, 14, 14]); {HOW_TO_PROVIDE}"
        )
    try:
        # Converts Meta's layout (it carries mask_token) and resamples pos_embed.
        state = checkpoint_filter_fn(state, model)
        state = {k: v for k, v in state.items() if not k.startswith(("head.", "dino_head"))}
        model.load_state_dict(state, strict=True)
    except Exception as exc:
        message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ModelUnavailable(
            f"weights file {path.name} is not a DINOv2 ViT-S/14 checkpoint ({message[:300]}); "
            f"{HOW_TO_PROVIDE}"
        ) from None


def _tensor_hash(model: Any) -> str:
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().to("cpu", copy=True).contiguous().numpy().tobytes())
    return digest.hexdigest()
