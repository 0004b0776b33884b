"""What the machine can do natively, detected, never assumed.

A precision is only a candidate where the hardware runs it natively: bf16 on a CPU with
AVX512-BF16 or AMX (emulated elsewhere, several times slower than fp32), bf16 and fp16 on
a CUDA GPU. The CPU and GPU model names key the remembered runtime choice: a data root
moved to another machine runs the trial again.
"""

from __future__ import annotations

import platform
from dataclasses import dataclass
from pathlib import Path

# /proc/cpuinfo flags that mean bf16 matrix arithmetic in hardware.
BF16_FLAGS = frozenset({"avx512_bf16", "amx_bf16"})
GPU_BF16 = "cuda_bf16"  # added to the flags when the GPU computes bf16 natively
CPUINFO = Path("/proc/cpuinfo")  # a module value: tests point it at another CPU's


@dataclass(frozen=True)
class Hardware:
    device: str  # "cpu" | "cuda" | "cuda:N"
    cpu_model: str
    cpu_flags: frozenset[str]  # /proc/cpuinfo flags (and GPU_BF16 on such a GPU)
    gpu_model: str = ""

    @property
    def on_gpu(self) -> bool:
        return self.device.startswith("cuda")

    def native(self, precision: str) -> bool:
        """True when ``precision`` runs in hardware on this device (int8 runs on every
        CPU through VNNI or plain integer SIMD; its speed is what the trial measures)."""
        if precision in ("fp32", "int8"):
            return True
        if self.on_gpu:  # fp16 on every CUDA GPU; bf16 from Ampere on
            return precision == "fp16" or (precision == "bf16" and GPU_BF16 in self.cpu_flags)
        return precision == "bf16" and bool(self.cpu_flags & BF16_FLAGS)

    def describe(self) -> str:
        return self.gpu_model if self.on_gpu else self.cpu_model


def detect(device: str) -> Hardware:
    """The hardware behind ``device`` (a resolved torch device string)."""
    model, flags = _cpu_info()
    gpu = ""
    if device.startswith("cuda"):
        import torch

        gpu = torch.cuda.get_device_name(device)
        if torch.cuda.is_bf16_supported(including_emulation=False):
            flags = flags | {GPU_BF16}
    return Hardware(device=device, cpu_model=model, cpu_flags=flags, gpu_model=gpu)


def _cpu_info() -> tuple[str, frozenset[str]]:
    model, flags = "", frozenset[str]()
    try:
        text = CPUINFO.read_text(errors="replace")
    except OSError:
        text = ""  # not Linux: no bf16 claimed; fp32 and int8 are still tried
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key == "model name" and not model:
            model = value.strip()
        elif key in ("flags", "Features") and not flags:
            flags = frozenset(value.split())
    return model or platform.machine(), flags
