"""What each command does. Handlers run on the worker thread, which owns the engine."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from typing import Any

from agent.commands import (
    AddNg,
    CalibrateNg,
    Command,
    DatasetClear,
    DatasetDelete,
    DatasetList,
    FitImages,
    FitOk,
    Infer,
    InferBatch,
    Manifest,
    Refit,
    RoiCommand,
)
from agent.errors import AgentError
from agent.results import (
    AddNgResult,
    BatchItem,
    CalibrationResult,
    DatasetClearResult,
    DatasetDeleteResult,
    DatasetListResult,
    FitResult,
    InferBatchResult,
    InferResult,
    JsonResult,
    Result,
)
from agent.services import Services
from engine.calibration import choose_threshold
from engine.datasets import StoredSample
from engine.errors import BadInput, CorruptMemory, EngineError, NotFitted
from engine.keys import RoiKey
from engine.manifest import roi_manifest
from engine.memory import Memory, check_scale, utc_now_iso
from engine.patchcore import Sample
from engine.preprocess import declared_size, decode_image
from engine.verdict import judge

Body = dict[str, Any]
Checkpoint = Callable[[], None]


def roi_key(cmd: RoiCommand) -> RoiKey:
    return RoiKey.of(cmd.role_id, cmd.roi_id, cmd.recipe_id, cmd.model_key)


def _stored_sample(sample: StoredSample, services: Services) -> Sample:
    def load() -> Any:
        return decode_image(sample.image.read_bytes(), services.limits)

    return Sample(sample.sha256, load)


def _require_memory(services: Services, key: RoiKey) -> Memory:
    memory = services.cache.get(key)
    if memory is None:
        raise NotFitted(f"ROI {key.role_id}/{key.roi_id} has no memory yet; run fit_ok first")
    return memory


def _store_images(
    services: Services,
    cmd: FitOk | AddNg,
    key: RoiKey,
    label: str,
    checkpoint: Checkpoint,
    added: list[StoredSample],
) -> list[StoredSample]:
    """Store the command's images; ``added`` collects the samples new to the dataset, so
    that a command that fails later can take them back."""
    # Every image is decoded before any is stored: a bad one refuses the whole command.
    # Waiting infers are served between images: a 100-image upload takes seconds.
    for i, data in enumerate(cmd.images):
        try:
            decode_image(data, services.limits)
        except BadInput as exc:
            raise BadInput(f"images[{i}]: {exc}") from None
        checkpoint()
    meta = {"mm_per_px": cmd.mm_per_px, "source": cmd.source, "request_id": cmd.request_id}
    # A crash between storing and journaling the reply would store the samples again when
    # the request is repeated (a folder file after a restart): reuse what this request
    # already stored instead.
    earlier = [
        s for s in services.datasets.list(key, label) if s.meta.get("request_id") == cmd.request_id
    ]
    stored = []
    for data in cmd.images:
        sha = hashlib.sha256(data).hexdigest()
        same = next((s for s in earlier if s.meta.get("sha256") == sha), None)
        if same is not None:
            earlier.remove(same)
            stored.append(same)
        else:
            stored.append(services.datasets.add(key, label, data, meta))
            added.append(stored[-1])
        checkpoint()
    return stored


def _all_or_nothing(services: Services, run: Callable[[list[StoredSample]], Body]) -> Body:
    """A storing command that fails (disk full halfway, a fit that cannot be saved) takes
    back the samples it added: an error reply means nothing was stored, so the caller may
    send the images again under any request id without storing them twice."""
    added: list[StoredSample] = []
    try:
        return run(added)
    except Exception:
        services.datasets.remove(added)
        raise


def fit_ok(cmd: FitOk, services: Services, checkpoint: Checkpoint) -> FitResult:
    start = time.perf_counter()
    key = roi_key(cmd)
    check_scale(services.datasets.scale(key, "ok"), cmd.mm_per_px, "OK dataset")

    def run(added: list[StoredSample]) -> Body:
        stored = _store_images(services, cmd, key, "ok", checkpoint, added)
        body: Body = {
            "ok_added": len(stored),
            "samples": [s.to_dict() for s in stored],
            "memory_fit": cmd.memory_fit,
        }
        if cmd.memory_fit:
            body.update(refit(services, key, cmd.mm_per_px, cmd.shape, checkpoint))
        return body

    body = _all_or_nothing(services, run)
    body["elapsed_ms"] = round((time.perf_counter() - start) * 1000, 1)
    return FitResult(**body)


def refit(
    services: Services,
    key: RoiKey,
    mm_per_px: float | None,
    shape: dict[str, Any] | None,
    checkpoint: Checkpoint,
) -> Body:
    """Rebuild the ROI's memory from its whole OK dataset (the contract's accumulation).

    Under the ROI's refit lock: another agent on the same data root refitting this ROI
    at the same time goes first or second, never in between (waiting infers are served
    while the lock is taken), so the memory saved last covers every stored sample."""
    with services.models.refit_lock(key, waiting=checkpoint):
        samples = services.datasets.list(key, "ok")
        if not samples:
            raise BadInput(f"ROI {key.role_id}/{key.roi_id} has no OK samples to fit")
        scale = mm_per_px or services.datasets.scale(key, "ok")
        fit_samples = [_stored_sample(s, services) for s in samples]
        return _fit_memory(services, key, fit_samples, scale, shape, checkpoint)


def _fit_memory(
    services: Services,
    key: RoiKey,
    samples: list[Sample],
    scale: float | None,
    shape: dict[str, Any] | None,
    checkpoint: Checkpoint,
) -> Body:
    """Fit, save and announce a ROI's memory; the fit fields of the ``fit_ok`` body."""
    defaults = services.defaults_for(key)
    shape = shape or (defaults.shape if defaults else None)
    memory = services.core.fit(samples, scale, shape, checkpoint)
    services.models.save_memory(key, memory)
    services.cache.put(key, memory)
    services.last_fit_ts = memory.info.created_at
    services.roi_changed(key)
    info = memory.info
    return {
        "n_embeddings": info.n_embeddings,
        "coreset_size": info.coreset_size,
        "token_shape": list(memory.token_shape),
        "coreset_rate_requested": info.coreset_rate_requested,
        "coreset_rate_applied": round(info.coreset_rate_applied, 6),
        "n_samples": info.n_samples,
        "model_version": info.model_version,
    }


def refit_roi(cmd: Refit, services: Services, checkpoint: Checkpoint) -> FitResult:
    start = time.perf_counter()
    body: Body = {"ok_added": 0, "samples": [], "memory_fit": True}
    body.update(refit(services, roi_key(cmd), cmd.mm_per_px, cmd.shape, checkpoint))
    body["elapsed_ms"] = round((time.perf_counter() - start) * 1000, 1)
    return FitResult(**body)


def _bytes_samples(
    services: Services, images: tuple[bytes, ...], names: tuple[str, ...], field: str
) -> list[Sample]:
    """Samples of caller-owned bytes, decoded lazily (cached embeddings skip decoding);
    every image is checked first so that a bad one refuses the whole command."""
    limits = services.limits

    def loader(data: bytes) -> Callable[[], Any]:
        return lambda: decode_image(data, limits)

    samples = []
    for i, data in enumerate(images):
        label = f"{field}[{i}]" + (f" ({names[i]})" if i < len(names) else "")
        try:
            decode_image(data, limits)
        except BadInput as exc:
            raise BadInput(f"{label}: {exc}") from None
        samples.append(Sample(hashlib.sha256(data).hexdigest(), loader(data)))
    return samples


def fit_images(cmd: FitImages, services: Services, checkpoint: Checkpoint) -> FitResult:
    start = time.perf_counter()
    samples = _bytes_samples(services, cmd.images, cmd.names, "images")
    body: Body = {"ok_added": 0, "samples": [], "memory_fit": True}
    body.update(_fit_memory(services, roi_key(cmd), samples, cmd.mm_per_px, cmd.shape, checkpoint))
    body["elapsed_ms"] = round((time.perf_counter() - start) * 1000, 1)
    return FitResult(**body)


def add_ng(cmd: AddNg, services: Services, checkpoint: Checkpoint) -> AddNgResult:
    key = roi_key(cmd)
    try:
        memory = services.cache.get(key)
    except CorruptMemory:  # NG samples need no memory: the OK dataset's scale is checked
        memory = None
    reference = memory.info.mm_per_px if memory else services.datasets.scale(key, "ok")
    check_scale(reference, cmd.mm_per_px, "ROI")

    def run(added: list[StoredSample]) -> Body:
        stored = _store_images(services, cmd, key, "ng", checkpoint, added)
        return {"ng_added": len(stored), "samples": [s.to_dict() for s in stored]}

    return AddNgResult(**_all_or_nothing(services, run))


def calibrate_ng(cmd: CalibrateNg, services: Services, checkpoint: Checkpoint) -> CalibrationResult:
    key = roi_key(cmd)
    memory = _require_memory(services, key)
    settings = services.settings
    if cmd.mm_per_px is not None:
        check_scale(memory.info.mm_per_px, cmd.mm_per_px)
    if cmd.ok_scores is not None:
        ok_scores, ng_scores = list(cmd.ok_scores), list(cmd.ng_scores or [])
        method = "given"
    elif cmd.ok_images is not None:
        shape = memory.info.shape
        ok = _bytes_samples(services, cmd.ok_images, (), "ok_images")
        ng = _bytes_samples(services, cmd.ng_images or (), (), "ng_images")
        if not ok:
            raise BadInput("ok_images must hold at least one image")
        ok_scores = services.core.loo_scores(memory, ok, shape, checkpoint)
        ng_scores = services.core.loo_scores(memory, ng, shape, checkpoint)
        method = "self_scored"
    else:
        shape = memory.info.shape
        ok_samples = services.datasets.list(key, "ok")
        ng_samples = services.datasets.list(key, "ng")
        if not ok_samples:
            raise BadInput("no ok_scores given and the ROI has no stored OK samples to score")
        ok_scores = services.core.loo_scores(
            memory, [_stored_sample(s, services) for s in ok_samples], shape, checkpoint
        )
        ng_scores = services.core.loo_scores(
            memory, [_stored_sample(s, services) for s in ng_samples], shape, checkpoint
        )
        method = "self_scored"
    percentile = cmd.score_percentile or settings.score_percentile
    choice = choose_threshold(ok_scores, ng_scores, percentile)
    area = cmd.area_mm2_thr if cmd.area_mm2_thr is not None else settings.area_mm2_thr
    calibration: Body = {
        "threshold": choice.threshold,
        "ok_mean": choice.ok_mean,
        "ng_mean": choice.ng_mean,
        "p99_ok": choice.p99_ok,
        "p5_ng": choice.p5_ng,
        "n_ok": choice.n_ok,
        "n_ng": choice.n_ng,
        "mm_per_px": cmd.mm_per_px or memory.info.mm_per_px,
        "area_mm2_thr": area,
        "score_percentile": percentile,
        "model_version": memory.info.model_version,
        "method": method,
        "created_at": utc_now_iso(),
    }
    services.models.save_calibration(key, {**calibration, **_score_lists(ok_scores, ng_scores)})
    services.roi_changed(key)
    return CalibrationResult(**{k: v for k, v in calibration.items() if k != "created_at"})


# The stored calibration keeps the scores it was chosen from, for the console's
# histograms; a long list is thinned to this many, evenly over the sorted scores, so the
# file stays small and the histogram's shape stays true.
CALIBRATION_SCORES_KEPT = 2000


def _score_lists(ok_scores: list[float], ng_scores: list[float]) -> Body:
    return {"ok_scores": _thinned(ok_scores), "ng_scores": _thinned(ng_scores)}


def _thinned(scores: list[float]) -> list[float]:
    ordered = sorted(float(s) for s in scores)
    if len(ordered) <= CALIBRATION_SCORES_KEPT:
        return ordered
    step = (len(ordered) - 1) / (CALIBRATION_SCORES_KEPT - 1)
    return [ordered[round(i * step)] for i in range(CALIBRATION_SCORES_KEPT)]


def infer_many(
    cmds: list[Infer], services: Services, between: Checkpoint | None = None
) -> list[InferResult | AgentError]:
    """Several infers (one part's ROIs, or micro-batched callers) in one backbone pass.

    ``between`` runs after each image is decoded and after each is judged (an
    ``infer_batch`` serves the single infers that wait there); its time is not counted
    in ``inference_ms``."""
    start = time.perf_counter()
    paused = 0.0

    def pause() -> None:
        nonlocal paused
        if between is not None:
            begun = time.perf_counter()
            between()
            paused += time.perf_counter() - begun

    prepared: list[tuple[Infer, RoiKey, Memory, Any] | AgentError] = []
    for cmd in cmds:
        try:
            key = roi_key(cmd)
            image = decode_image(cmd.image, services.limits)  # bad input before ROI state
            memory = _require_memory(services, key)
            check_scale(memory.info.mm_per_px, cmd.mm_per_px)
            prepared.append((cmd, key, memory, image))
        except Exception as exc:
            prepared.append(AgentError.from_exception(exc))
        pause()
    ready = [p for p in prepared if not isinstance(p, AgentError)]
    embedded = iter(services.core.embed([image for *_, image in ready]) if ready else [])
    shared_ms = (time.perf_counter() - start - paused) * 1000
    out: list[InferResult | AgentError] = []
    for item in prepared:
        if isinstance(item, AgentError):
            out.append(item)
            continue
        try:
            out.append(_judge_one(services, *item[:3], next(embedded), shared_ms / len(ready)))
        except Exception as exc:
            out.append(AgentError.from_exception(exc))
        pause()
    return out


def _judge_one(
    services: Services, cmd: Infer, key: RoiKey, memory: Memory, embedded: Any, shared_ms: float
) -> InferResult:
    start = time.perf_counter()
    calibration = services.models.load_calibration(key)
    if cmd.require_calibration and calibration is None:
        raise AgentError(
            "not_calibrated",
            f"ROI {key.role_id}/{key.roi_id} is not calibrated; run calibrate_ng first",
        )
    defaults = services.defaults_for(key)
    shape = cmd.shape or (defaults.shape if defaults else None) or memory.info.shape
    prediction = services.core.predict_embedded(memory, embedded, shape)
    verdict = judge(
        prediction,
        memory,
        calibration,
        cmd.mm_per_px,
        services.settings.area_mm2_thr,
        heatmap=cmd.heatmap,
    )
    return InferResult(
        role_id=cmd.role_id,
        roi_id=cmd.roi_id,
        score=verdict.score,
        threshold=verdict.threshold,
        is_anomaly=verdict.is_anomaly,
        token_shape=verdict.token_shape,
        regions=tuple(region.to_dict() for region in verdict.regions),
        model_version=memory.info.model_version,
        runtime=services.core.extractor.runtime_id,
        inference_ms=round(shared_ms + (time.perf_counter() - start) * 1000, 2),
        heatmap_png=verdict.heatmap_png,
    )


def infer_batch(cmd: InferBatch, services: Services, checkpoint: Checkpoint) -> InferBatchResult:
    """The items in chunks of at most ``max_batch`` images and about one image's worth of
    pixels, each chunk one backbone pass; the infers that wait are served between items
    (after each decode and each verdict): a big batch neither holds every decoded image at
    once nor keeps the line's single infers waiting until it ends."""
    settings = services.settings
    pixels = [_declared_pixels(item.image) for item in cmd.items]
    check_batch_size(
        len(cmd.items), sum(pixels), settings.max_batch_items, settings.max_batch_pixels
    )
    results: list[InferResult | AgentError] = []
    for first, last in _chunks(pixels, settings.max_batch, settings.max_image_pixels):
        results += infer_many(list(cmd.items[first:last]), services, between=checkpoint)
    items = []
    for item, result in zip(cmd.items, results, strict=True):
        if isinstance(result, AgentError):
            items.append(BatchItem(request_id=item.request_id, error=result))
        else:
            items.append(BatchItem(request_id=item.request_id, result=result))
    return InferBatchResult(items=tuple(items))


def check_batch_size(items: int, pixels: int, max_items: int, max_pixels: int) -> None:
    if items > max_items:
        raise AgentError(
            "payload_too_large",
            f"infer_batch holds {items} items, over the limit of {max_items} "
            "(max_batch_items); send the ROIs in several batches",
        )
    if pixels > max_pixels:
        raise AgentError(
            "payload_too_large",
            f"infer_batch holds {pixels} pixels in all, over the limit of {max_pixels} "
            "(max_batch_pixels); send the ROIs in several batches",
        )


def _declared_pixels(data: bytes) -> int:
    """Pixels the image's header declares; an unreadable one fails on its own item later."""
    try:
        width, height = declared_size(data)
    except EngineError:  # unreadable, or past Pillow's own bomb limit
        return 0
    return width * height


def _chunks(pixels: list[int], max_items: int, max_pixels: int) -> list[tuple[int, int]]:
    """``[first, last)`` ranges of consecutive items: at most ``max_items`` each, and no
    more than ``max_pixels`` unless a single item holds more."""
    out: list[tuple[int, int]] = []
    first, total = 0, 0
    for i, count in enumerate(pixels):
        if i > first and (i - first >= max_items or total + count > max_pixels):
            out.append((first, i))
            first, total = i, 0
        total += count
    if pixels:
        out.append((first, len(pixels)))
    return out


def manifest(cmd: Manifest, services: Services, checkpoint: Checkpoint) -> JsonResult:
    body = roi_manifest(services.models, services.datasets, roi_key(cmd))
    if services.model_state == "ready":
        # The memory may have been built by another runtime; every runtime that serves
        # passed the same fidelity gate against torch fp32, so their features agree.
        choice = services.core.extractor.choice
        body["serving_runtime"] = services.core.extractor.runtime_id
        body["serving_runtime_reason"] = choice.reason
    return JsonResult(values=body)


def dataset_list(cmd: DatasetList, services: Services, checkpoint: Checkpoint) -> DatasetListResult:
    key = roi_key(cmd)
    labels = [cmd.label] if cmd.label else ["ok", "ng"]
    out: Body = {}
    for label in labels:
        samples = services.datasets.list(key, label)
        out[label] = {
            "count": len(samples),
            "files": [
                {"file": s.image.name, "mm_per_px": s.mm_per_px, "meta": s.meta} for s in samples
            ],
        }
    return DatasetListResult(datasets=out)


def dataset_delete(
    cmd: DatasetDelete, services: Services, checkpoint: Checkpoint
) -> DatasetDeleteResult:
    deleted = services.datasets.delete(roi_key(cmd), cmd.label, cmd.file)
    return DatasetDeleteResult(deleted=deleted, label=cmd.label, file=cmd.file)


def dataset_clear(
    cmd: DatasetClear, services: Services, checkpoint: Checkpoint
) -> DatasetClearResult:
    deleted = services.datasets.clear(roi_key(cmd), cmd.label)
    return DatasetClearResult(deleted=deleted, label=cmd.label)


def single_infer(cmd: Infer, services: Services, checkpoint: Checkpoint) -> InferResult:
    (result,) = infer_many([cmd], services)
    if isinstance(result, AgentError):
        raise result
    return result


Handler = Callable[[Any, Services, Checkpoint], Result]

HANDLERS: dict[type[Command], Handler] = {
    FitOk: fit_ok,
    AddNg: add_ng,
    Refit: refit_roi,
    FitImages: fit_images,
    CalibrateNg: calibrate_ng,
    Infer: single_infer,
    InferBatch: infer_batch,
    Manifest: manifest,
    DatasetList: dataset_list,
    DatasetDelete: dataset_delete,
    DatasetClear: dataset_clear,
}

# What a mutating command's journaled ``fields()`` are read back as, on a repeat.
RESULTS: dict[type[Command], type[Result]] = {
    FitOk: FitResult,
    AddNg: AddNgResult,
    Refit: FitResult,
    FitImages: FitResult,
    CalibrateNg: CalibrationResult,
    DatasetDelete: DatasetDeleteResult,
    DatasetClear: DatasetClearResult,
}
