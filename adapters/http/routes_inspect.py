"""Routes that teach and ask the model: fit_ok, send_ng, calibrate_ng, infer, infer_batch,
and the legacy ``/predict`` (seed 001's response shape)."""

from __future__ import annotations

import json
from typing import Annotated, Any

from fastapi import APIRouter, File, Form, UploadFile
from fastapi.responses import JSONResponse

from adapters.http.routes_common import (
    COMMON_ERRORS,
    UPLOAD_ERRORS,
    BridgeDep,
    reply_response,
    with_target_dir,
)
from adapters.http.schemas import (
    AddNgOut,
    CalibrateNgIn,
    CalibrateNgOut,
    ErrorOut,
    FitOkOut,
    InferBatchOut,
    InferOut,
    PredictOut,
)
from agent.errors import bad_request

router = APIRouter(tags=["inspection"])

RoleId = Annotated[str, Form(description="inspection role, e.g. Inspection")]
RoiId = Annotated[str, Form(description="ROI id, e.g. Inspection_1")]
MmPerPx = Annotated[float, Form(description="scale of the crop in mm per pixel (> 0)")]
Images = Annotated[list[UploadFile], File(description="1..N ROI crops (PNG/JPEG/BMP/TIFF)")]
Image = Annotated[UploadFile, File(description="one ROI crop (PNG/JPEG/BMP/TIFF)")]
Shape = Annotated[
    str | None,
    Form(
        description='ROI mask as a JSON string in image pixels, e.g. {"kind":"annulus",'
        '"cx":112,"cy":112,"r_outer":100,"r_inner":50}; also rect, circle, polygon'
    ),
]
RecipeField = Annotated[str | None, Form(description="product variant (default: default)")]
ModelKey = Annotated[str | None, Form(description="memory name (default: roi_id)")]
Heatmap = Annotated[bool, Form(description="return heatmap_png_base64")]
RequireCalibration = Annotated[
    bool, Form(description="refuse with 428 when the ROI has no threshold yet")
]

INFER_ERRORS: dict[int | str, dict[str, Any]] = {
    **UPLOAD_ERRORS,
    428: {"model": ErrorOut, "description": "not_calibrated (with require_calibration=true)"},
}

BATCH_DESCRIPTION = """Several ROIs of one part in one call (one backbone pass).

`multipart/form-data` with:
- `items`: a JSON string, a list of objects with the `infer` fields of each ROI:
  `role_id`, `roi_id`, `mm_per_px`, and optionally `shape` (a JSON object), `heatmap`,
  `require_calibration`, `model_key`, `request_id`;
- `images`: the ROI crops, repeated, in the order of `items` (`images[i]` goes with
  `items[i]`). Without `images`, each item must carry its crop as base64 in `image`
  (the MQTT form).

The reply lists one result per item, in the same order; a failed item carries its own
`error` and does not fail the others.
"""


async def store_samples(
    bridge: BridgeDep, name: str, fields: dict[str, Any], images: list[UploadFile]
) -> JSONResponse:
    payload = {**fields, "images": await bridge.read_images(images, "images")}
    reply = await bridge.submit(name, payload)
    return reply_response(reply, with_target_dir(reply.to_dict()) if reply.ok else None)


@router.post("/fit_ok", response_model=FitOkOut, responses=UPLOAD_ERRORS)
async def fit_ok(
    bridge: BridgeDep,
    role_id: RoleId,
    roi_id: RoiId,
    mm_per_px: MmPerPx,
    images: Images,
    memory_fit: Annotated[bool, Form(description="false: only store the samples")] = True,
    shape: Shape = None,
    recipe_id: RecipeField = None,
    model_key: ModelKey = None,
) -> JSONResponse:
    """Store OK images and rebuild the memory from the ROI's whole OK dataset."""
    fields = {
        "role_id": role_id,
        "roi_id": roi_id,
        "mm_per_px": mm_per_px,
        "memory_fit": memory_fit,
        "shape": shape,
        "recipe_id": recipe_id,
        "model_key": model_key,
    }
    return await store_samples(bridge, "fit_ok", fields, images)


@router.post("/send_ng", response_model=AddNgOut, responses=UPLOAD_ERRORS)
async def send_ng(
    bridge: BridgeDep,
    role_id: RoleId,
    roi_id: RoiId,
    mm_per_px: MmPerPx,
    images: Images,
    recipe_id: RecipeField = None,
    model_key: ModelKey = None,
) -> JSONResponse:
    """Store NG images (the seeds' name of ``add_ng``)."""
    fields = {
        "role_id": role_id,
        "roi_id": roi_id,
        "mm_per_px": mm_per_px,
        "recipe_id": recipe_id,
        "model_key": model_key,
    }
    return await store_samples(bridge, "add_ng", fields, images)


@router.post("/calibrate_ng", response_model=CalibrateNgOut, responses=UPLOAD_ERRORS)
async def calibrate_ng(bridge: BridgeDep, body: CalibrateNgIn) -> JSONResponse:
    """Choose and store the ROI's threshold (JSON body)."""
    reply = await bridge.submit("calibrate_ng", body.model_dump(exclude_none=True))
    return reply_response(reply)


def _infer_fields(
    role_id: str,
    roi_id: str,
    mm_per_px: float,
    shape: str | None,
    heatmap: bool,
    require_calibration: bool,
    recipe_id: str | None,
    model_key: str | None,
) -> dict[str, Any]:
    return {
        "role_id": role_id,
        "roi_id": roi_id,
        "mm_per_px": mm_per_px,
        "shape": shape,
        "heatmap": heatmap,
        "require_calibration": require_calibration,
        "recipe_id": recipe_id,
        "model_key": model_key,
    }


@router.post("/infer", response_model=InferOut, responses=INFER_ERRORS)
async def infer(
    bridge: BridgeDep,
    role_id: RoleId,
    roi_id: RoiId,
    mm_per_px: MmPerPx,
    image: Image,
    shape: Shape = None,
    heatmap: Heatmap = True,
    require_calibration: RequireCalibration = False,
    recipe_id: RecipeField = None,
    model_key: ModelKey = None,
) -> JSONResponse:
    """Score one ROI crop: score, verdict, regions in mm², heatmap."""
    fields = _infer_fields(
        role_id, roi_id, mm_per_px, shape, heatmap, require_calibration, recipe_id, model_key
    )
    (data,) = await bridge.read_images([image], "image")
    return reply_response(await bridge.submit("infer", {**fields, "image": data}))


@router.post("/predict", response_model=PredictOut, responses=INFER_ERRORS)
async def predict(
    bridge: BridgeDep,
    role_id: RoleId,
    roi_id: RoiId,
    mm_per_px: MmPerPx,
    image: Image,
    shape: Shape = None,
    heatmap: Heatmap = True,
    require_calibration: RequireCalibration = False,
    recipe_id: RecipeField = None,
    model_key: ModelKey = None,
) -> JSONResponse:
    """``infer`` with seed 001's response shape (for GUIs built on the old backend)."""
    fields = _infer_fields(
        role_id, roi_id, mm_per_px, shape, heatmap, require_calibration, recipe_id, model_key
    )
    (data,) = await bridge.read_images([image], "image")
    reply = await bridge.submit("infer", {**fields, "image": data})
    return reply_response(reply, _legacy_predict(reply.to_dict()) if reply.ok else None)


def _legacy_predict(body: dict[str, Any]) -> dict[str, Any]:
    score = {
        "roi": body["roi_id"],
        "score": body["score"],
        "is_anomaly": body["is_anomaly"],
        "threshold": body["threshold"],
        "regions": body["regions"],
    }
    if "heatmap_png_base64" in body:
        score["heatmap_png_base64"] = body["heatmap_png_base64"]
    rows, cols = body["token_shape"]
    return {
        "role_id": body["role_id"],
        "roi_id": body["roi_id"],
        "scores": [score],
        "inference_ms": body["inference_ms"],
        # The backbone's input is the token grid times the 14-px patch.
        "image_resized": [rows * 14, cols * 14],
        "token_shape": body["token_shape"],
        "model_version": body["model_version"],
        "request_id": body["request_id"],
        "recipe_id": body["recipe_id"],
    }


@router.post(
    "/infer_batch",
    response_model=InferBatchOut,
    responses={**COMMON_ERRORS, 413: UPLOAD_ERRORS[413]},
    description=BATCH_DESCRIPTION,
)
async def infer_batch(
    bridge: BridgeDep,
    items: Annotated[str, Form(description="JSON list of per-ROI infer fields")],
    images: Annotated[
        list[UploadFile] | None, File(description="ROI crops, in the order of items")
    ] = None,
    recipe_id: RecipeField = None,
) -> JSONResponse:
    listed = _items(items)
    if images:
        if len(images) != len(listed):
            raise bad_request(f"{len(images)} images were sent for {len(listed)} items")
        crops = await bridge.read_images(images, "images")
        listed = [
            {**item, "image": crop} if isinstance(item, dict) else item
            for item, crop in zip(listed, crops, strict=True)
        ]
    reply = await bridge.submit("infer_batch", {"items": listed, "recipe_id": recipe_id})
    return reply_response(reply)


def _items(text: str) -> list[Any]:
    try:
        items = json.loads(text)
    except json.JSONDecodeError as exc:
        raise bad_request(f"items is not valid JSON: {exc.msg}") from None
    if not isinstance(items, list) or not items:
        raise bad_request("items must be a non-empty JSON list of infer inputs")
    return items
