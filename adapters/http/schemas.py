"""Wire schemas of the HTTP API (contract section 7): what the GUI sends and receives.

These describe the JSON on the wire and feed the OpenAPI document; they are not the
agent's internal types (``agent.commands``). Response models allow extra fields: a
newer agent may add fields, and a GUI must ignore the ones it does not know.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field


class Wire(BaseModel):
    model_config = ConfigDict(extra="allow")


class Ids(Wire):
    request_id: str = Field(description="the caller's X-Request-Id, else a new UUID")
    recipe_id: str = Field(description="product variant the command ran under")


class ErrorDetail(Wire):
    code: int = Field(description="HTTP status code of the failure")
    kind: str = Field(description="bad_request, not_fitted, token_mismatch, unauthorized, ...")
    message: str = Field(description="what was wrong, naming the bad field or value")


class ErrorOut(Ids):
    error: ErrorDetail


# -- requests ----------------------------------------------------------------------------
#
# Routes declare every field as plain text (or an upload), so FastAPI hands what the
# client sent, untouched, to the parser MQTT and folders use (``agent.parsing``): the same
# input gets the same answer on every adapter. These JSON schemas say what the parser
# accepts, for the OpenAPI document only (``WithJsonSchema`` on each route's fields); they
# check nothing. Required fields say so in their description: to FastAPI they are
# optional, and the parser refuses a missing one, naming it.

ID_DOC: dict[str, Any] = {"type": "string", "minLength": 1, "maxLength": 90}
SCALE_DOC: dict[str, Any] = {"type": "number", "exclusiveMinimum": 0, "maximum": 1000}
FLAG_DOC: dict[str, Any] = {"type": "boolean"}
TEXT_DOC: dict[str, Any] = {"type": "string"}
LABEL_DOC: dict[str, Any] = {"type": "string", "enum": ["ok", "ng"]}
JSON_LIST_DOC: dict[str, Any] = {"type": "string", "contentMediaType": "application/json"}


class CalibrateNgIn(BaseModel):
    """Body of ``POST /calibrate_ng``, for the OpenAPI document (the route hands the raw
    JSON to the shared parser). Without ``ok_scores`` the agent scores its own stored OK
    (leave-one-out) and NG samples."""

    model_config = ConfigDict(extra="ignore")

    role_id: str = Field(min_length=1, max_length=90)
    roi_id: str = Field(min_length=1, max_length=90)
    recipe_id: str | None = Field(None, description="else ?recipe_id=, else X-Recipe-Id")
    model_key: str | None = Field(None, description="default: roi_id")
    mm_per_px: float | None = Field(None, gt=0, le=1000)
    ok_scores: list[float] | None = Field(None, description="scores of OK images")
    ng_scores: list[float] | None = Field(None, description="scores of NG images")
    ok_images: list[str] | None = Field(None, description="base64 OK images to score")
    ng_images: list[str] | None = Field(None, description="base64 NG images to score")
    area_mm2_thr: float | None = Field(None, ge=0, description="smallest region kept (mm^2)")
    score_percentile: float | None = Field(
        None, ge=0, le=100, description="OK percentile without NG"
    )


# -- responses ---------------------------------------------------------------------------


class RootOut(Wire):
    name: str
    version: str
    docs: str


class HealthOut(Ids):
    status: Literal["ok", "degraded", "loading", "error"]
    device: str
    model: str
    weights: str = Field(description="pretrained | file:<name> | random")
    version: str
    mqtt: Literal["connected", "disconnected", "disabled"]
    queue_size: int
    reason: str | None = Field(None, description="why the status is not ok")
    error: ErrorDetail | None = Field(None, description="set with status 503")


class SampleOut(Wire):
    file: str
    meta: str


class FitOkOut(Ids):
    ok_added: int
    samples: list[SampleOut]
    target_dir: str | None = Field(None, description="folder the samples were stored in")
    memory_fit: bool
    n_embeddings: int | None = Field(None, description="absent with memory_fit=false")
    coreset_size: int | None = None
    token_shape: list[int] | None = None
    coreset_rate_requested: float | None = None
    coreset_rate_applied: float | None = None
    n_samples: int | None = Field(None, description="OK samples the memory was built from")
    model_version: str | None = None
    elapsed_ms: float


class AddNgOut(Ids):
    ng_added: int
    samples: list[SampleOut]
    target_dir: str | None = None


class CalibrateNgOut(Ids):
    threshold: float
    ok_mean: float | None
    ng_mean: float | None = None
    p99_ok: float | None = None
    p5_ng: float | None = None
    n_ok: int | None = None
    n_ng: int | None = None
    mm_per_px: float | None
    area_mm2_thr: float
    score_percentile: float
    model_version: str
    method: str | None = Field(None, description="given | self_scored")


class RegionOut(Wire):
    x: int
    y: int
    w: int
    h: int
    cx: float
    cy: float
    area_px: int
    area_mm2: float
    max_score: float
    mean_score: float


class Verdict(Wire):
    role_id: str
    roi_id: str
    score: float
    threshold: float | None = Field(description="null while uncalibrated")
    is_anomaly: bool | None = Field(description="null while uncalibrated")
    token_shape: list[int]
    regions: list[RegionOut]
    heatmap_png_base64: str | None = Field(None, description="grayscale PNG; 128 = threshold")
    inference_ms: float
    model_version: str


class InferOut(Verdict, Ids):
    pass


class InferBatchItemOut(Wire):
    """One ROI's verdict (``ok: true``, the ``infer`` fields) or its own error."""

    ok: bool
    request_id: str
    error: ErrorDetail | None = None
    score: float | None = None
    threshold: float | None = None
    is_anomaly: bool | None = None
    regions: list[RegionOut] | None = None


class InferBatchOut(Ids):
    results: list[InferBatchItemOut] = Field(description="same order as the items")


class PredictScore(Wire):
    roi: str
    score: float
    is_anomaly: bool | None
    threshold: float | None
    regions: list[RegionOut]
    heatmap_png_base64: str | None = None


class PredictOut(Ids):
    """Seed 001's ``/predict`` shape."""

    role_id: str
    roi_id: str
    scores: list[PredictScore]
    inference_ms: float
    image_resized: list[int] = Field(description="[height, width] fed to the backbone")
    token_shape: list[int]
    model_version: str


class MemoryOut(Wire):
    exists: bool
    n: int | None = None
    coreset_size: int | None = None
    token_shape: list[int] | None = None
    mm_per_px: float | None = None
    model_version: str | None = None
    created_at: str | None = None
    error: str | None = None


class ManifestOut(Ids):
    role_id: str
    roi_id: str
    model_key: str
    memory: MemoryOut
    calibration: dict[str, Any] | None
    datasets: dict[str, int] = Field(description="sample counts: ok, ng")


class DatasetFile(Wire):
    file: str = Field(description="bare file name, as DELETE /datasets/file takes it")
    mm_per_px: float | None
    meta: dict[str, Any]


class DatasetLabel(Wire):
    count: int
    files: list[DatasetFile]


class DatasetListOut(Ids):
    ok: DatasetLabel | None = None
    ng: DatasetLabel | None = None


class DatasetDeleteOut(Ids):
    deleted: int
    label: str
    file: str


class DatasetClearOut(Ids):
    deleted: int
    label: str


class TrainStatusOut(Ids):
    """Seed 001's ``/train/status`` shape."""

    status: Literal["idle", "running"] = Field(
        description="running while a fit, refit or calibration runs or waits in the queue"
    )
    running: str | None = Field(description="the training command running now, if any")
    queued: int = Field(description="training commands waiting in the queue")
    last_train_ts: str | None = Field(description="last memory rebuilt by this process")
    queue_size: int
    model: str
    device: str
    coreset_size: int | None = Field(
        description="of ?role_id=&roi_id= when given, else of the ROI fitted last"
    )


class StatsOut(Wire):
    infer_p50_ms: float | None
    infer_p95_ms: float | None
    infer_count: int
    counts: dict[str, int]
    by_source: dict[str, int]
    queue_size: int
    mqtt: str
    spool_size: int
    device: str
    boot_id: str
