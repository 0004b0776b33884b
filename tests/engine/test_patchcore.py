"""PatchCore end to end on synthetic discs, with the real (randomly initialised) backbone."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from agent.demo.discs import SyntheticDisc, encode_png, make_set
from engine.calibration import choose_threshold
from engine.coreset import CoresetConfig
from engine.embedding_cache import EmbeddingCache
from engine.errors import ScaleMismatch, TokenMismatch
from engine.features import FeatureExtractor
from engine.keys import RoiKey
from engine.memory import Memory, check_scale
from engine.patchcore import PatchCore, PatchCoreConfig, Sample
from engine.store import ModelStore
from engine.verdict import judge

SIZE = 224
VISIBLE = ("scratch", "crack", "rust", "pits")  # edge_chip sits on the ROI's own edge


def auroc(negatives: list[float], positives: list[float]) -> float:
    pairs = [(p > n) + 0.5 * (p == n) for p in positives for n in negatives]
    return float(np.mean(pairs))


@pytest.fixture(scope="module")
def train() -> list[SyntheticDisc]:
    return make_set(seed=1, n_ok=20, size=SIZE)


@pytest.fixture(scope="module")
def core(extractor: FeatureExtractor) -> PatchCore:
    return PatchCore(extractor, PatchCoreConfig(coreset=CoresetConfig(rate=0.1, min_size=256)))


@pytest.fixture(scope="module")
def memory(core: PatchCore, train: list[SyntheticDisc]) -> Memory:
    samples = [Sample.from_bytes(encode_png(d.image)) for d in train]
    return core.fit(samples, mm_per_px=0.2, shape=train[0].roi_shape)


@pytest.fixture(scope="module")
def scored(core: PatchCore, memory: Memory, train: list[SyntheticDisc]):
    test = make_set(seed=2, n_ok=12, n_per_defect=4, size=SIZE)
    predictions = core.predict(memory, [d.image for d in test], train[0].roi_shape)
    return list(zip(test, predictions, strict=True))


def test_fit_reports_its_memory(memory: Memory) -> None:
    info = memory.info
    assert memory.token_shape == (16, 16)
    assert 0 < info.n_embeddings < 20 * 256  # patches outside the annulus are left out
    assert info.coreset_size == len(memory.bank) == max(256, round(info.n_embeddings * 0.1))
    assert info.coreset_rate_applied == pytest.approx(info.coreset_size / info.n_embeddings)
    assert memory.bank.dtype == np.float16 and info.ok_scale > 0
    assert len(info.sample_sha256) == info.n_samples == 20


def test_defects_score_above_ok_discs(scored) -> None:
    ok = [p.score for d, p in scored if d.kind == "ok"]
    bad = [p.score for d, p in scored if d.kind in VISIBLE]
    assert auroc(ok, bad) >= 0.75
    rust = [p.score for d, p in scored if d.kind == "rust"]
    assert min(rust) > np.median(ok)


def test_the_top_region_overlaps_the_true_defect(scored, memory: Memory) -> None:
    ok = [p.score for d, p in scored if d.kind == "ok"]
    calibration = {"threshold": choose_threshold(ok).threshold}
    hits = 0
    rust = [(d, p) for d, p in scored if d.kind == "rust"]
    for disc, prediction in rust:
        verdict = judge(prediction, memory, calibration, mm_per_px=0.2)
        if verdict.regions:
            top = verdict.regions[0]
            box = disc.defect_mask[top.y : top.y + top.h, top.x : top.x + top.w]
            hits += bool(box.any())
    assert hits >= len(rust) - 1


def test_heatmap_png_has_the_input_size(scored, memory: Memory) -> None:
    disc, prediction = scored[0]
    verdict = judge(prediction, memory, None, mm_per_px=0.2)
    assert verdict.threshold is None and verdict.is_anomaly is None and verdict.regions == []
    assert verdict.heatmap_png is not None
    heatmap = cv2.imdecode(np.frombuffer(verdict.heatmap_png, np.uint8), cv2.IMREAD_UNCHANGED)
    assert heatmap.shape == disc.image.shape[:2] and heatmap.dtype == np.uint8
    assert judge(prediction, memory, None, 0.2, heatmap=False).heatmap_png is None


def test_token_grid_mismatch_is_refused(core: PatchCore, memory: Memory) -> None:
    wide = make_set(seed=3, n_ok=1, size=SIZE)[0].image[:, : SIZE // 2]
    with pytest.raises(TokenMismatch, match=r"\[16, 8\]"):
        core.predict(memory, [wide])
    mixed = [Sample.from_bytes(encode_png(np.zeros((s, s, 3), np.uint8))) for s in (112, 224)]
    mixed.append(Sample.from_bytes(encode_png(np.zeros((224, 112, 3), np.uint8))))
    with pytest.raises(TokenMismatch):
        core.fit(mixed, mm_per_px=0.2)


def test_scale_mismatch_over_one_percent() -> None:
    check_scale(0.2, 0.2019)
    check_scale(None, 5.0)
    with pytest.raises(ScaleMismatch, match="1 %"):
        check_scale(0.2, 0.2021)


def test_save_reload_gives_identical_scores(
    tmp_path: Path, core: PatchCore, memory: Memory, scored
) -> None:
    store = ModelStore(tmp_path)
    key = RoiKey.of("Inspection", "Inspection_1")
    store.save_memory(key, memory)
    reloaded = store.load_memory(key)
    assert reloaded is not None and reloaded.info == memory.info
    images = [d.image for d, _ in scored[:3]]
    shape = memory.info.shape
    before = core.predict(memory, images, shape)
    after = core.predict(reloaded, images, shape)
    for a, b in zip(before, after, strict=True):
        assert a.score == b.score and np.array_equal(a.amap, b.amap)


def test_refit_runs_the_backbone_only_on_new_images(
    tmp_path: Path, extractor: FeatureExtractor, train: list[SyntheticDisc]
) -> None:
    seen: list[int] = []

    class CountingExtractor(FeatureExtractor):
        def extract(self, images: np.ndarray) -> np.ndarray:
            seen.append(len(images))
            return extractor.extract(images)

    counting = CountingExtractor(extractor.config)
    counting._model, counting._device, counting._weights = (
        extractor._model,
        extractor._device,
        extractor._weights,
    )
    core = PatchCore(counting, PatchCoreConfig(max_batch=4, fit_chunk=4), EmbeddingCache(tmp_path))
    samples = [Sample.from_bytes(encode_png(d.image)) for d in train[:6]]
    first = core.fit(samples[:4], mm_per_px=0.2)
    assert seen == [4]
    second = core.fit(samples, mm_per_px=0.2)
    assert seen == [4, 2]  # the four known images came from the cache
    assert first.info.model_version != second.info.model_version
    core.embed([d.image for d in train[:3]])
    assert seen[-1] == 3  # three images, one backbone pass


def test_single_image_memory_still_has_an_ok_scale(
    core: PatchCore, train: list[SyntheticDisc]
) -> None:
    memory = core.fit([Sample.from_bytes(encode_png(train[0].image))], mm_per_px=0.2)
    assert memory.info.coreset_size == memory.info.n_embeddings  # few-shot keeps every patch
    assert memory.info.ok_scale > 0


def test_loo_scores_do_not_flatter_training_images(
    core: PatchCore, memory: Memory, train: list[SyntheticDisc]
) -> None:
    samples = [Sample.from_bytes(encode_png(d.image)) for d in train[:5]]
    loo = core.loo_scores(memory, samples, memory.info.shape)
    direct = [
        p.score for p in core.predict(memory, [d.image for d in train[:5]], memory.info.shape)
    ]
    assert all(a > b for a, b in zip(loo, direct, strict=True))


def test_a_calibration_without_area_uses_the_callers(scored, memory: Memory) -> None:
    _, prediction = scored[0]
    calibration = {"threshold": 0.0, "area_mm2_thr": None}  # everything is above threshold
    assert judge(prediction, memory, calibration, 0.2, area_mm2_thr=0.0).regions
    assert not judge(prediction, memory, calibration, 0.2, area_mm2_thr=1e9).regions
    stored = {"threshold": 0.0, "area_mm2_thr": 1e9}  # the calibration's own wins
    assert not judge(prediction, memory, stored, 0.2, area_mm2_thr=0.0).regions
