"""Run the trial (or reuse its remembered outcome) and hand back the runner that serves."""

from __future__ import annotations

import functools
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import structlog

from engine.backbone.artefacts import Artefacts
from engine.backbone.choose import (
    REFERENCE,
    Candidate,
    Choice,
    TrialRow,
    TrialSetup,
    Unavailable,
    build_runner,
    candidates,
    describe,
    features_of,
    fidelity,
    median_ms,
    passes,
    remember,
    remembered,
    trial_key,
    with_status,
)
from engine.backbone.runners import Runner, TorchRunner
from engine.errors import EngineError, ModelUnavailable
from engine.preprocess import cv2_module, normalise, resize_to_grid

log = structlog.get_logger("engine.runtime")
REFERENCE_IMAGES = 3  # the gate's batch: stored OK crops where there are any


def select(
    model: Any,
    device: Any,
    setup: TrialSetup,
    images: Callable[[], Sequence[np.ndarray]] = tuple,
    force: bool = False,
) -> tuple[Runner, Choice]:
    """The runner that serves and why. ``images`` gives RGB crops for the gate (a ROI's
    stored OK images; read only when a gate runs); generated ones make up the batch.
    ``force`` ignores a remembered choice."""
    allowed, skipped = candidates(setup)
    key = trial_key(setup)
    if not allowed:
        reasons = "; ".join(f"{r.runtime} {r.precision}: {r.reason}" for r in skipped)
        raise ModelUnavailable(
            f"no backbone runtime can serve runtime={setup.runtime} "
            f"precision={setup.precision} here ({reasons})"
        )
    if allowed == [REFERENCE]:
        why = f"torch fp32 set by configuration (runtime {setup.runtime}, precision fp32)"
        pinned: Runner = TorchRunner(model, device, "fp32", setup.layers)
        return pinned, Choice("torch", "fp32", why, "settings", skipped, key)
    # Without a runtime folder (a notebook, a test) exports go to a temp folder of their own.
    folder = setup.folder or Path(tempfile.mkdtemp(prefix="bdi-runtime-"))
    artefacts = Artefacts(folder, model, setup.weights_sha256, setup.layers)
    # Decoded only when a gate runs: a start that reuses its choice reads no image.
    batch = functools.cache(lambda: reference_batch(images(), setup.input_size))
    if not force:
        known = remembered(setup.folder, key)
        if known is not None:
            reused = _reuse(known, model, device, setup, artefacts, batch)
            if reused is not None:
                return reused, replace(known, source="remembered")
    started = time.perf_counter()
    runner, choice = _trial(allowed, skipped, model, device, setup, artefacts, batch(), key)
    choice.trial_s = round(time.perf_counter() - started, 1)
    choice.build_s = round(sum(row.build_s or 0.0 for row in choice.rows), 1)
    try:
        remember(setup.folder, choice)
    except EngineError as exc:  # a read-only root: the trial runs again next start
        log.warning("runtime choice not remembered", reason=str(exc))
    return runner, choice


def _reuse(
    known: Choice,
    model: Any,
    device: Any,
    setup: TrialSetup,
    artefacts: Artefacts,
    batch: Callable[[], list[np.ndarray]],
) -> Runner | None:
    """The remembered runner, its artefact checked; one rebuilt (corrupt, deleted) is
    gated again before it serves. None: run the trial again."""
    try:
        runner = build_runner(known.candidate, model, device, setup, artefacts, batch)
    except Exception as exc:
        log.warning("remembered runtime cannot be built", runtime=known.reason, reason=str(exc))
        return None
    if artefacts.built:
        reference = features_of(TorchRunner(model, device, "fp32", setup.layers), batch())
        cos_mean, cos_min = fidelity(reference, features_of(runner, batch()))
        log.info("runtime artefact rebuilt", built=artefacts.built, cos_mean=cos_mean)
        if not passes(cos_mean, cos_min):
            return None
    return runner


def _trial(
    allowed: list[Candidate],
    skipped: list[TrialRow],
    model: Any,
    device: Any,
    setup: TrialSetup,
    artefacts: Artefacts,
    batch: list[np.ndarray],
    key: str,
) -> tuple[Runner, Choice]:
    hw = setup.hardware
    reference_runner = TorchRunner(model, device, "fp32", setup.layers)
    reference = features_of(reference_runner, batch)
    timed = len(allowed) > 1  # one candidate set by configuration: gated, not timed
    # The timing budget is shared out as the trial goes: a candidate slower to build or
    # gate leaves less to the others, each still timed at least twice.
    deadline = time.monotonic() + setup.budget_s
    left = len(allowed) + (REFERENCE not in allowed)

    def share() -> float:
        nonlocal left
        left -= 1
        return max(0.0, deadline - time.monotonic()) / (left + 1)

    timing_x = reference_batch([], setup.input_size, n=1)[0][None]
    reference_ms = None
    if timed:
        reference_runner.run(timing_x)  # warm-up at the timing size
        reference_ms = median_ms(reference_runner, timing_x, share())
    rows: list[TrialRow] = []
    runners: dict[Candidate, Runner] = {}
    for candidate in allowed:
        row = TrialRow(candidate.runtime, candidate.precision, "passed")
        if candidate == REFERENCE:
            row.ms, row.ratio, row.cos_mean, row.cos_min = reference_ms, 1.0, 1.0, 1.0
            rows.append(row)
            runners[candidate] = reference_runner
            continue
        start = time.perf_counter()
        try:
            runner: Runner = build_runner(candidate, model, device, setup, artefacts, lambda: batch)
            row.build_s = round(time.perf_counter() - start, 2)
            row.cos_mean, row.cos_min = fidelity(reference, features_of(runner, batch))
        except Unavailable as exc:
            rows.append(replace(row, status="unavailable", reason=str(exc)))
            continue
        except Exception as exc:  # an exporter or runtime bug: that candidate is out
            log.warning("runtime candidate failed", candidate=candidate.label, exc_info=True)
            rows.append(replace(row, status="error", reason=f"{type(exc).__name__}: {exc}"))
            continue
        if not passes(row.cos_mean, row.cos_min):
            row.status = "failed_gate"
            row.reason = (
                f"cosine mean {row.cos_mean:.5f}, min {row.cos_min:.4f}: "
                "under the gate (mean 0.999, min 0.99)"
            )
        elif timed:
            runner.run(timing_x)  # warm-up at the timing size
            row.ms = median_ms(runner, timing_x, share())
            row.ratio = row.ms / reference_ms if reference_ms else None
            runners[candidate] = runner
        else:
            runners[candidate] = runner
        rows.append(row)
    passed = [r for r in rows if Candidate(r.runtime, r.precision) in runners]
    if not passed:
        reasons = "; ".join(f"{r.runtime} {r.precision}: {r.reason}" for r in rows)
        raise ModelUnavailable(f"no backbone runtime passed the fidelity gate ({reasons})")
    best = min(passed, key=lambda r: r.ms if r.ms is not None else 0.0)
    chosen = Candidate(best.runtime, best.precision)
    source = "trial" if timed else "settings"
    reason = describe(best, hw) if timed else f"{chosen.label} set by configuration"
    all_rows = with_status(rows, chosen) + skipped
    return runners[chosen], Choice(chosen.runtime, chosen.precision, reason, source, all_rows, key)


def reference_batch(
    images: Sequence[np.ndarray], input_size: int, n: int = REFERENCE_IMAGES
) -> list[np.ndarray]:
    """Up to ``n`` images as the backbone sees them, (3, H, W) float32 each: the given
    ones first, then seeded textured squares (edges, rings, noise at several scales)."""
    picked = [resize_to_grid(image, input_size) for image in list(images)[:n]]
    rng = np.random.default_rng(0)
    cv2 = cv2_module()
    while len(picked) < n:
        coarse = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
        image = cv2.resize(coarse, (input_size, input_size), interpolation=cv2.INTER_CUBIC)
        noise = rng.normal(0, 12, image.shape)
        centre = input_size // 2
        for radius in range(input_size // 8, input_size // 2, input_size // 10):
            cv2.circle(image, (centre, centre), radius, (40, 40, 40), 2)
        image = np.clip(image + noise, 0, 255).astype(np.uint8)
        picked.append(resize_to_grid(image, input_size))
    return [normalise(image[None])[0] for image in picked]
