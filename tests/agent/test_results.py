"""Typed results: no field shares a name with the MQTT envelope, so merging the two never
renames or loses anything; a journaled result reads back as the same result."""

from __future__ import annotations

import dataclasses

from adapters.mqtt.topics import ENVELOPE_FIELDS
from agent import results
from agent.results import (
    BatchItem,
    CalibrationResult,
    FitResult,
    InferBatchResult,
    InferResult,
    Result,
)


def result_classes() -> list[type[Result]]:
    found = [
        value
        for value in vars(results).values()
        if isinstance(value, type) and issubclass(value, Result) and value is not Result
    ]
    assert len(found) >= 8
    return found


def test_no_result_field_is_an_envelope_field() -> None:
    for cls in result_classes():
        names = {f.name for f in dataclasses.fields(cls)} - {"values"}
        assert not names & {*ENVELOPE_FIELDS, "error"}, (cls.__name__, names & set(ENVELOPE_FIELDS))


def test_a_heatmap_stays_bytes_until_an_adapter_encodes_it() -> None:
    verdict = InferResult(
        role_id="r",
        roi_id="i",
        score=0.5,
        threshold=0.4,
        is_anomaly=True,
        token_shape=(16, 16),
        regions=({"area_mm2": 2.0}, {"area_mm2": 5.0}),
        model_version="v1",
        runtime="torch-fp32",
        inference_ms=3.0,
        heatmap_png=b"\x89PNG...",
    )
    assert "heatmap_png" not in verdict.fields() and "heatmap_png_base64" not in verdict.fields()
    assert verdict.body()["heatmap_png_base64"] == "iVBORy4uLg=="
    assert verdict.max_area_mm2 == 5.0 and verdict.fields()["token_shape"] == [16, 16]
    batch = InferBatchResult(items=(BatchItem(request_id="a", result=verdict),))
    assert "heatmap_png_base64" not in batch.fields()["results"][0]
    assert batch.body()["results"][0]["ok"] is True


def test_a_journaled_result_reads_back_the_same() -> None:
    fit = FitResult(ok_added=2, samples=({"file": "a.png"},), model_version="v", n_samples=2)
    assert FitResult.from_fields(fit.fields()).fields() == fit.fields()
    stored_only = FitResult(ok_added=1, memory_fit=False)
    assert set(stored_only.fields()) == {"ok_added", "samples", "memory_fit", "elapsed_ms"}
    calibration = CalibrationResult(
        threshold=0.3,
        ok_mean=0.1,
        ng_mean=None,
        p99_ok=0.3,
        p5_ng=None,
        n_ok=4,
        n_ng=0,
        mm_per_px=0.2,
        area_mm2_thr=0.0,
        score_percentile=99.0,
        model_version="v",
        method="given",
    )
    assert CalibrationResult.from_fields({**calibration.fields(), "old": 1}) == calibration
