"""The backbone runtimes behind one interface.

A runner turns normalised images, (N, 3, H, W) float32 with H and W multiples of 14, into
patch features, (N, H/14, W/14, C) float32, C = 384 per layer used. ``TorchRunner`` runs the
timm model itself; the exported runners (ONNX Runtime, OpenVINO) run only the transformer
blocks, whose input is a token sequence of any length: the patch embedding and the
position embedding resampled to the image's grid (about 1 % of the work) stay in torch,
so one exported file serves every ROI size and batch.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

if TYPE_CHECKING:
    import torch

PATCH = 14


class Runner(Protocol):
    runtime: str  # "torch" | "onnxruntime" | "openvino"
    precision: str  # "fp32" | "bf16" | "fp16" | "int8"

    def run(self, x: np.ndarray) -> np.ndarray: ...


def block_indices(model: Any, layers: tuple[int, ...]) -> list[int]:
    """Sorted, non-negative block indices of ``layers`` (timm's order of intermediates)."""
    count = len(model.blocks)
    return sorted({i % count for i in layers})


class TorchRunner:
    def __init__(
        self, model: Any, device: torch.device, precision: str, layers: tuple[int, ...]
    ) -> None:
        import torch

        self.runtime, self.precision = "torch", precision
        self.model, self.device, self.layers = model, device, list(layers)
        self._dtype = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]

    def run(self, x: np.ndarray) -> np.ndarray:
        import torch

        with (
            torch.inference_mode(),
            torch.autocast(
                device_type=self.device.type,
                dtype=self._dtype or torch.float32,
                enabled=self._dtype is not None,
            ),
        ):
            maps = self.model.forward_intermediates(
                torch.from_numpy(x).to(self.device),
                indices=self.layers,
                norm=True,
                output_fmt="NCHW",
                intermediates_only=True,
            )
        feats = torch.cat([m.float() for m in maps], dim=1)  # (N, C, h, w)
        return np.ascontiguousarray(feats.permute(0, 2, 3, 1).cpu().numpy())


def token_trunk(model: Any, layers: tuple[int, ...]) -> torch.nn.Module:
    """The part of the model an exported runtime runs: (N, L, 384) tokens (prefix tokens
    first) -> (N, L, 384 * len(layers)), each chosen block's output through the final
    norm, concatenated in block order as ``forward_intermediates`` gives them."""
    from torch import nn

    take = block_indices(model, layers)

    class TokenTrunk(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.blocks = model.blocks[: take[-1] + 1]
            self.norm = model.norm

        def forward(self, tokens: torch.Tensor) -> torch.Tensor:
            import torch

            outs = []
            for i, block in enumerate(self.blocks):
                tokens = block(tokens)
                if i in take:
                    outs.append(self.norm(tokens))
            return torch.cat(outs, dim=-1)

    return TokenTrunk().eval()


def embed_tokens(model: Any, x: np.ndarray) -> np.ndarray:
    """(N, 3, H, W) -> (N, prefix + H/14 * W/14, 384) float32: the patch embedding and the
    position embedding resampled to this grid, in torch fp32 on the model's device."""
    import torch

    device = next(model.parameters()).device
    with torch.inference_mode():
        tokens = model.patch_embed(torch.from_numpy(x).to(device))
        tokens = model.norm_pre(model.patch_drop(model._pos_embed(tokens)))
    return np.ascontiguousarray(tokens.cpu().numpy())


def tokens_to_maps(features: np.ndarray, model: Any, hw: tuple[int, int]) -> np.ndarray:
    """(N, prefix + h * w, C) -> (N, h, w, C): prefix tokens dropped, patches on the grid."""
    h, w = hw[0] // PATCH, hw[1] // PATCH
    patches = features[:, model.num_prefix_tokens :]
    return np.ascontiguousarray(patches.reshape(len(features), h, w, -1), dtype=np.float32)


class OnnxRunner:
    def __init__(
        self, model: Any, path: Path, precision: str, threads: int, providers: list[str]
    ) -> None:
        import onnxruntime as ort

        self.runtime, self.precision, self.model = "onnxruntime", precision, model
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = 3  # its warnings are not the agent's log
        self.session = ort.InferenceSession(str(path), options, providers=providers)

    def run(self, x: np.ndarray) -> np.ndarray:
        tokens = embed_tokens(self.model, x)
        (features,) = self.session.run(None, {"tokens": tokens})
        return tokens_to_maps(features, self.model, x.shape[2:])


class OpenVinoRunner:
    def __init__(self, model: Any, path: Path, precision: str, threads: int) -> None:
        import openvino as ov

        self.runtime, self.precision, self.model = "openvino", precision, model
        core = ov.Core()
        config = {"INFERENCE_NUM_THREADS": threads, "INFERENCE_PRECISION_HINT": "f32"}
        self.compiled = core.compile_model(str(path), "CPU", config)

    def run(self, x: np.ndarray) -> np.ndarray:
        tokens = embed_tokens(self.model, x)
        features = self.compiled(tokens)[0]
        return tokens_to_maps(np.asarray(features), self.model, x.shape[2:])
