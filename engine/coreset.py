"""Greedy k-center coreset selection (PatchCore, Roth et al. 2022, section 3.2).

The greedy loop runs on a Gaussian random projection of the embeddings (Johnson-
Lindenstrauss), one fused matrix-vector product per selected centre. Only the
projection (N x projection_dim float32) and a few length-N vectors are held, so a
200k-patch fit stays within a few hundred MB.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import torch


CHECKPOINT_EVERY = 32


@dataclass(frozen=True)
class CoresetConfig:
    rate: float = 0.02
    min_size: int = 1024  # a few-shot ROI keeps every patch up to this many
    max_size: int = 20_000
    projection_dim: int = 128
    seed: int = 0


def coreset_size(n_patches: int, config: CoresetConfig) -> int:
    """How many patches to keep: ``rate * n`` clamped to [min_size, max_size], at most n."""
    wanted = math.ceil(n_patches * config.rate)
    return min(n_patches, max(config.min_size, min(config.max_size, wanted)))


def greedy_k_center(
    embeddings: np.ndarray,
    size: int,
    projection_dim: int = 128,
    seed: int = 0,
    chunk_rows: int = 65_536,
    checkpoint: Callable[[], None] | None = None,
) -> np.ndarray:
    """Indices of ``size`` rows chosen by greedy k-center.

    embeddings: (N, D) float16 or float32. Returns (size,) int64, in selection order.
    ``checkpoint`` is called every ``CHECKPOINT_EVERY`` selections (tens of ms even on
    200k patches): a worker serves waiting inferences there, or raises to abort the fit.
    """
    import torch

    n_rows = embeddings.shape[0]
    if size >= n_rows:
        return np.arange(n_rows, dtype=np.int64)
    if size <= 0:
        return np.empty(0, dtype=np.int64)
    generator = torch.Generator().manual_seed(seed)
    points = _project(embeddings, projection_dim, generator, chunk_rows)
    sq_norms = (points * points).sum(dim=1)
    min_dist = torch.full((n_rows,), math.inf)
    dist = torch.empty(n_rows)
    chosen = np.empty(size, dtype=np.int64)
    current = int(torch.randint(n_rows, (1,), generator=generator))
    for step in range(size):
        chosen[step] = current
        # ||x - c||^2 = ||x||^2 - 2 x.c + ||c||^2, as one BLAS call plus a scalar add.
        torch.addmv(sq_norms, points, points[current], alpha=-2.0, out=dist)
        dist.add_(sq_norms[current])
        torch.minimum(min_dist, dist, out=min_dist)
        current = int(torch.argmax(min_dist))
        if checkpoint is not None and step % CHECKPOINT_EVERY == CHECKPOINT_EVERY - 1:
            checkpoint()
    return chosen


def _project(
    embeddings: np.ndarray, projection_dim: int, generator: torch.Generator, chunk_rows: int
) -> torch.Tensor:
    import torch

    n_rows, dim = embeddings.shape
    if dim <= projection_dim:
        return torch.from_numpy(np.ascontiguousarray(embeddings, dtype=np.float32))
    basis = torch.randn(dim, projection_dim, generator=generator) / math.sqrt(projection_dim)
    out = torch.empty(n_rows, projection_dim)
    for start in range(0, n_rows, chunk_rows):
        block = np.asarray(embeddings[start : start + chunk_rows], dtype=np.float32)
        torch.matmul(torch.from_numpy(block), basis, out=out[start : start + len(block)])
    return out
