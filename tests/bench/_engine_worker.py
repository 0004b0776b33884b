"""Engine measurements that need a fresh process, so that memory the parent has already
touched (models, earlier runs, glibc arenas) cannot pollute their peak RSS.

The parent calls ``run_worker(task, args)``; the child runs
``python -m tests.bench._engine_worker TASK ARGS_JSON RESULT_PATH`` and writes its result
as JSON to RESULT_PATH. The child's stdout is sent to the parent's stderr, so that library
chatter can never corrupt the JSON lines on the parent's stdout.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from tests.bench._measure import StageClock, peak_rss_mib, reset_peak_rss, rss_mib

REPO_ROOT = Path(__file__).resolve().parents[2]
THREADS = 2
MM_PER_PX = 0.2
# A child above this is killed: the machine is shared, and anomalib's KCenterGreedy has been
# seen to grow its glibc heap without bound (23 GB, then the kernel's global OOM killer).
RSS_CAP_MIB = 12 * 1024
_POLL_S = 0.2


class WorkerFailed(RuntimeError):
    def __init__(self, message: str, over_cap: bool = False) -> None:
        super().__init__(message)
        self.over_cap = over_cap


# -- parent side ----------------------------------------------------------------------------


def run_worker(task: str, args: dict[str, Any], rss_cap_mib: float = RSS_CAP_MIB) -> dict[str, Any]:
    """Run ``task`` in a child interpreter and return its JSON result.

    Raises ``WorkerFailed`` when the child fails, or is killed for passing ``rss_cap_mib``
    (``over_cap`` set).
    """
    env = dict(os.environ)
    env["HF_HUB_OFFLINE"] = "1"  # random weights only: nothing may reach a model hub
    env["TQDM_DISABLE"] = "1"  # anomalib's per-centre progress bar is only noise here
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH")) if p)
    with tempfile.TemporaryDirectory(prefix="bench-worker-") as tmp:
        out = Path(tmp) / "result.json"
        cmd = [sys.executable, "-m", "tests.bench._engine_worker", task, json.dumps(args), str(out)]
        child = subprocess.Popen(cmd, cwd=REPO_ROOT, env=env, stdout=sys.stderr)
        seen_mib = _watch(child, rss_cap_mib)
        if seen_mib > rss_cap_mib:
            raise WorkerFailed(
                f"worker {task} killed at {seen_mib:.0f} MiB RSS (cap {rss_cap_mib:.0f} MiB)",
                over_cap=True,
            )
        if child.returncode != 0 or not out.is_file():
            raise WorkerFailed(f"worker {task} {args} exited with {child.returncode}")
        result: dict[str, Any] = json.loads(out.read_text())
        return result


def _watch(child: subprocess.Popen[bytes], cap_mib: float) -> float:
    """Wait for ``child``, killing it once its RSS passes ``cap_mib``; the largest RSS seen."""
    status = Path(f"/proc/{child.pid}/status")
    seen = 0.0
    while child.poll() is None:
        try:
            line = next(x for x in status.read_text().splitlines() if x.startswith("VmRSS:"))
            seen = max(seen, int(line.split()[1]) / 1024)
        except (OSError, StopIteration, ValueError):
            pass  # exiting, or not Linux: the child's own reading still stands
        if seen > cap_mib:
            child.kill()
            child.wait()
            break
        time.sleep(_POLL_S)
    return seen


# -- child side: fit ------------------------------------------------------------------------


def _fit_task(args: dict[str, Any]) -> dict[str, Any]:
    """Fit ``n_images`` OK discs (no ROI shape, so every one of the 1024 patches per image
    goes in) and report time per stage, peak RSS and the stored model's size.

    With ``dump_path`` the backbone's float32 outputs are appended there as they come, so
    later benchmarks reuse exactly the fit's embeddings instead of running the backbone
    again; the dump's time is measured and taken out of the fit time.
    """
    import engine.patchcore as patchcore
    from agent.demo.discs import encode_png, make_set
    from engine.features import BackboneConfig, FeatureExtractor

    n_images = int(args["n_images"])
    samples = [
        patchcore.Sample.from_bytes(encode_png(disc.image))
        for disc in make_set(int(args["seed"]), n_images)
    ]
    config = BackboneConfig(
        weights="random", runtime="torch", precision=str(args["precision"]), threads=THREADS
    )
    extractor = FeatureExtractor(config)
    extractor.load()  # an agent loads the model once at start; a fit never pays for it
    # One max_batch pass first: a fit runs in a warm agent, not on cold oneDNN kernels.
    extractor.extract(np.stack([s.load() for s in samples[:8]]))
    core = patchcore.PatchCore(extractor)
    clock = StageClock()
    dump = open(args["dump_path"], "wb") if args.get("dump_path") else None  # noqa: SIM115
    extractor.extract = _recording_extract(extractor.extract, clock, dump)  # type: ignore[method-assign,assignment]

    rss_before = rss_mib()
    peak_is_fit_only = reset_peak_rss()
    start = time.perf_counter()
    with (
        clock.patched(patchcore, "greedy_k_center", "coreset"),
        clock.patched(core, "predict_embedded", "loo"),
    ):
        memory = core.fit(samples, mm_per_px=MM_PER_PX)
    wall_ms = (time.perf_counter() - start) * 1000
    peak = peak_rss_mib()
    if dump is not None:
        dump.close()

    fit_ms = wall_ms - clock.ms["dump"]
    result: dict[str, Any] = {
        "n_images": n_images,
        "precision": args["precision"],
        "fit_ms": fit_ms,
        "backbone_ms": clock.ms["backbone"],
        "coreset_ms": clock.ms["coreset"],
        "loo_ms": clock.ms["loo"],
        "other_ms": fit_ms - clock.ms["backbone"] - clock.ms["coreset"] - clock.ms["loo"],
        "n_embeddings": memory.info.n_embeddings,
        "coreset_size": memory.info.coreset_size,
        "rss_before_mib": rss_before,
        "peak_rss_mib": peak,
        "peak_is_fit_only": peak_is_fit_only,
        "dump_rows": memory.info.n_embeddings,
        "dump_dim": int(memory.bank.shape[1]),
    }
    if args.get("store_dir"):
        result.update(_stored_sizes(memory, Path(args["store_dir"])))
    return result


def _recording_extract(
    extract: Callable[[np.ndarray], np.ndarray], clock: StageClock, dump: Any
) -> Callable[[np.ndarray], np.ndarray]:
    def recording(images: np.ndarray) -> np.ndarray:
        with clock.stage("backbone"):
            feats = extract(images)
        if dump is not None:
            with clock.stage("dump"):
                feats.tofile(dump)  # (B, h, w, C) row-major: patches in image, row, col order
        return feats

    return recording


def _stored_sizes(memory: Any, store_dir: Path) -> dict[str, Any]:
    """Bytes of the model as ModelStore writes it (float16 bank) and of the same arrays with
    the bank as float32."""
    from engine.keys import RoiKey
    from engine.store import ModelStore

    path = ModelStore(store_dir).save_memory(RoiKey.of("bench", "disc"), memory)
    f32_path = store_dir / "bank_float32.npz"
    np.savez(
        f32_path,
        emb=np.asarray(memory.bank, dtype=np.float32),
        sources=np.asarray(memory.sources, dtype=np.int32),
        token_h=np.int64(memory.token_shape[0]),
        token_w=np.int64(memory.token_shape[1]),
        metadata=np.array(json.dumps(memory.info.to_json())),
    )
    with np.load(path) as stored:
        stored_dtype = str(stored["emb"].dtype)
    return {
        "bank_rows": int(memory.bank.shape[0]),
        "bank_dim": int(memory.bank.shape[1]),
        "stored_bank_dtype": stored_dtype,
        "bytes_float16": path.stat().st_size,
        "bytes_float32": f32_path.stat().st_size,
    }


# -- child side: coreset selection ----------------------------------------------------------


def _coreset_task(args: dict[str, Any]) -> dict[str, Any]:
    """Select ``int(rows * rate)`` centres from the dumped embeddings with one method; time
    it, and measure the RSS growth from just before the selection to its peak."""
    import torch

    torch.set_num_threads(THREADS)
    rows, dim = int(args["rows"]), int(args["dim"])
    embeddings = np.fromfile(args["emb_path"], dtype=np.float32, count=rows * dim)
    embeddings = embeddings.reshape(rows, dim)
    if args.get("dtype") == "float16":
        embeddings = embeddings.astype(np.float16)  # what PatchCore.fit hands the selection
    size = int(rows * float(args["rate"]))  # anomalib's own rounding, so both pick as many
    try:
        select = _selector(str(args["method"]), embeddings, size, args)
    except ImportError as exc:
        return {"unavailable": f"{type(exc).__name__}: {exc}"}

    rss_before = rss_mib()
    peak_is_selection_only = reset_peak_rss()
    start = time.perf_counter()
    chosen = np.asarray(select(), dtype=np.int64)
    wall_ms = (time.perf_counter() - start) * 1000
    peak = peak_rss_mib()
    np.save(args["idx_out"], chosen)
    return {
        "ms": wall_ms,
        "rss_before_mib": rss_before,
        "peak_rss_mib": peak,
        "rss_growth_mib": peak - rss_before,
        "peak_is_selection_only": peak_is_selection_only,
        "centres": len(chosen),
        "unique": len(np.unique(chosen)),
    }


def _selector(
    method: str, embeddings: np.ndarray, size: int, args: dict[str, Any]
) -> Callable[[], Any]:
    """A zero-argument selection call; imports and setup happen here, before the clock."""
    import torch

    seed = int(args.get("seed", 0))
    torch.manual_seed(seed)  # anomalib draws its start point from torch's global RNG
    np.random.seed(seed)  # and its sparse projection from numpy's (random_state=None)
    if method == "ours":
        from engine.coreset import greedy_k_center

        pdim = int(args["projection_dim"])
        return lambda: greedy_k_center(embeddings, size, projection_dim=pdim, seed=seed)
    tensor = torch.from_numpy(embeddings)
    if method == "anomalib":
        from anomalib.models.components.sampling import KCenterGreedy

        sampler = KCenterGreedy(embedding=tensor, sampling_ratio=float(args["rate"]))
        return sampler.select_coreset_idxs
    if method == "plain":
        return lambda: plain_greedy_k_center(tensor, size, seed)
    raise ValueError(f"unknown coreset method {method!r}")


def plain_greedy_k_center(points: Any, size: int, seed: int = 0) -> np.ndarray:
    """Greedy k-center as PatchCore's paper states it, in the full embedding space: the next
    centre is the point farthest from every centre chosen so far. The stand-in baseline
    when anomalib cannot be installed."""
    import torch

    n_rows = points.shape[0]
    generator = torch.Generator().manual_seed(seed)
    current = int(torch.randint(n_rows, (1,), generator=generator))
    min_dist = torch.full((n_rows,), float("inf"))
    chosen = np.empty(size, dtype=np.int64)
    for step in range(size):
        chosen[step] = current
        dist = torch.linalg.vector_norm(points - points[current], dim=1)
        torch.minimum(min_dist, dist, out=min_dist)
        current = int(torch.argmax(min_dist))
    return chosen


_TASKS: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {
    "fit": _fit_task,
    "coreset": _coreset_task,
}


def main(argv: list[str] | None = None) -> int:
    task, raw_args, out_path = argv if argv is not None else sys.argv[1:]
    import torch

    torch.set_num_threads(THREADS)
    result = _TASKS[task](json.loads(raw_args))
    Path(out_path).write_text(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
