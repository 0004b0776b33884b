"""DINOv2 ViT-S/14 through timm, and where its weights come from.

Exactly one source, named by the ``weights`` setting: a ``.pth``/``.safetensors`` file
(timm or Meta key layout), ``hub`` (the Hugging Face cache, then the hub, tried once with
a short timeout) or ``random`` (seeded random initialisation, for tests and the demo
only). A source that fails raises ``ModelUnavailable``; there is no fallback.
"""

from __future__ import annotations

import hashlib
import os
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from engine.errors import ModelUnavailable

if TYPE_CHECKING:
    import torch

MODEL_NAME = "vit_small_patch14_dinov2.lvd142m"
HUB_REPO = "timm/vit_small_patch14_dinov2.lvd142m"
RANDOM_SEED = 0
HUB_TIMEOUT_S = 5.0  # one short try: an offline line PC must not wait out retries

HOW_TO_PROVIDE = (
    "provide DINOv2 ViT-S/14 weights: set BDI_BACKBONE_WEIGHTS to a .pth/.safetensors file "
    f"(timm or Meta layout), or put '{HUB_REPO}' in the Hugging Face cache (HF_HOME); "
    "BDI_BACKBONE_WEIGHTS=random runs with random weights (demo and tests only)"
)


@dataclass(frozen=True)
class WeightsInfo:
    label: str  # "pretrained" | "file:<name>" | "random" (the contract's health field)
    sha256: str  # hash of the loaded tensors: memories are only valid with the same weights


def build_vit(weights: str) -> tuple[Any, WeightsInfo]:
    """The timm model in eval mode on the CPU, its weights loaded from ``weights``."""
    import timm
    import torch

    with torch.random.fork_rng(devices=[]):
        # Seeded so that every process builds the same "random" weights: a memory fitted
        # by one agent stays valid for another sharing the data root.
        torch.manual_seed(RANDOM_SEED)
        model = timm.create_model(
            MODEL_NAME, pretrained=False, num_classes=0, dynamic_img_size=True
        )
    label = "random"
    if weights != "random":
        path, label = _locate_weights(weights)
        load_weights_file(model, path)
    model.eval().requires_grad_(False)
    return model, WeightsInfo(label=label, sha256=tensor_hash(model))


def _locate_weights(spec: str) -> tuple[Path, str]:
    if spec == "hub":
        return _hub_weights(), "pretrained"
    path = Path(spec).expanduser()
    if not path.is_file():
        raise ModelUnavailable(f"weights file {path} not found; {HOW_TO_PROVIDE}")
    return path, f"file:{path.name}"


def _hub_weights() -> Path:
    try:
        from huggingface_hub import constants, hf_hub_download
    except ImportError as exc:  # pragma: no cover - a dependency of timm
        raise ModelUnavailable(f"huggingface_hub missing ({exc}); {HOW_TO_PROVIDE}") from None
    try:
        return Path(hf_hub_download(HUB_REPO, "model.safetensors", local_files_only=True))
    except Exception:
        pass  # not cached: try the hub itself below
    if constants.is_offline_mode():
        raise ModelUnavailable(
            f"DINOv2 weights are not in the Hugging Face cache and the hub is off "
            f"(HF_HUB_OFFLINE); {HOW_TO_PROVIDE}"
        )
    reason = _unreachable(constants.ENDPOINT)
    if reason is None:
        try:
            return Path(hf_hub_download(HUB_REPO, "model.safetensors", etag_timeout=HUB_TIMEOUT_S))
        except Exception as exc:
            reason = type(exc).__name__
    raise ModelUnavailable(
        f"DINOv2 weights are not in the Hugging Face cache and the hub is unreachable "
        f"({reason}); {HOW_TO_PROVIDE}"
    )


def _unreachable(endpoint: str) -> str | None:
    """Why the hub cannot be reached in one short TCP connect, or None when it can
    (huggingface_hub itself would retry for half a minute)."""
    url = urlsplit(endpoint)
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        with socket.create_connection((url.hostname or "", port), timeout=HUB_TIMEOUT_S):
            return None
    except OSError as exc:
        return f"{url.hostname}:{port}: {exc.strerror or type(exc).__name__}"


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


def tensor_hash(model: Any) -> str:
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().to("cpu", copy=True).contiguous().numpy().tobytes())
    return digest.hexdigest()


def cpu_threads(threads: int | None) -> int:
    return threads or os.cpu_count() or 1
