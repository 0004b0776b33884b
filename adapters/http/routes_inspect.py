"""Routes that teach and ask the model: fit_ok, send_ng, calibrate_ng, infer, infer_batch,
and the legacy ``/predict`` (seed 001's response shape)."""

from __future__ import annotations

import json
from typing import Annotated, Any

from fastapi import APIRouter, File, Form, Request, UploadFile
from fastapi.responses import JSONResponse
from pydantic import BaseModel, WithJsonSchema

from adapters.http.routes_common import (
    COMMON_ERRORS,
    UPLOAD_ERRORS,
    BridgeDep,
    reply_response,
    with_target_dir,
)
from adapters.http.schemas import (
    FLAG_DOC,
    ID_DOC,
    JSON_LIST_DOC,
    SCALE_DOC,
    TEXT_DOC,
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

# Every field as sent (text, or None when absent or blank), for the shared parser; the
# JSON schema of each is for the OpenAPI document (adapters.http.schemas).
RoleId = Annotated[
    str | None,
    WithJsonSchema(ID_DOC),
    Form(description="inspection role, e.g. Inspection (required)"),
]
RoiId = Annotated[
    str | None, WithJsonSchema(ID_DOC), Form(description="ROI id, e.g. Inspection_1 (required)")
]
MmPerPx = Annotated[
    str | None,
    WithJsonSchema(SCALE_DOC),
    Form(
        description="scale of the crop in mm per pixel (required, unless configs/rois.yaml "
        "gives the ROI a default)"
    ),
]
Images = Annotated[
    list[UploadFile] | None, File(description="1..N ROI crops (PNG/JPEG/BMP/TIFF) (required)")
]
Image = Annotated[
    UploadFile | None, File(description="one ROI crop (PNG/JPEG/BMP/TIFF) (required)")
]
Shape = Annotated[
    str | None,
    WithJsonSchema(TEXT_DOC),
    Form(
        description='ROI mask as a JSON string in image pixels, e.g. {"kind":"annulus",'
        '"cx":112,"cy":112,"r_outer":100,"r_inner":50}; also rect, circle, polygon'
    ),
]
RecipeField = Annotated[
    str | None, WithJsonSchema(TEXT_DOC), Form(description="product variant (default: default)")
]
ModelKey = Annotated[
    str | None, WithJsonSchema(ID_DOC), Form(description="memory name (default: roi_id)")
]
MemoryFit = Annotated[
    str | None,
    WithJsonSchema(FLAG_DOC),
    Form(description="false: only store the samples (default: true)"),
]
Heatmap = Annotated[
    str | None,
    WithJsonSchema(FLAG_DOC),
    Form(description="return heatmap_png_base64 (default: true)"),
]
RequireCalibration = Annotated[
    str | None,
    WithJsonSchema(FLAG_DOC),
    Form(description="refuse with 428 when the ROI has no threshold yet (default: false)"),
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


def json_body_doc(model: type[BaseModel]) -> dict[str, Any]:
    """The OpenAPI request body of a route that reads its JSON itself."""
    schema = model.model_json_schema()
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": schema}}}}


async def json_object(request: Request) -> dict[str, Any]:
    """The body's JSON object, as sent: the shared parser checks its fields."""
    try:
        body = json.loads(await request.body())
    except (ValueError, RecursionError):  # not JSON, not UTF-8, nested past the limit
        raise bad_request("the body is not valid JSON") from None
    if not isinstance(body, dict):
        raise bad_request("the payload must be a JSON object")
    return body


async def store_samples(
    bridge: BridgeDep, name: str, fields: dict[str, Any], images: list[UploadFile] | None
) -> JSONResponse:
    payload = {**fields, "images": await bridge.read_images(images or [], "images")}
    reply = await bridge.submit(name, payload)
    return reply_response(reply, with_target_dir(reply.to_dict()) if reply.ok else None)


@router.post("/fit_ok", response_model=FitOkOut, responses=UPLOAD_ERRORS)
async def fit_ok(
    bridge: BridgeDep,
    role_id: RoleId = None,
    roi_id: RoiId = None,
    mm_per_px: MmPerPx = None,
    images: Images = None,
    memory_fit: MemoryFit = None,
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
    role_id: RoleId = None,
    roi_id: RoiId = None,
    mm_per_px: MmPerPx = None,
    images: Images = None,
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


@router.post(
    "/calibrate_ng",
    response_model=CalibrateNgOut,
    responses=UPLOAD_ERRORS,
    openapi_extra=json_body_doc(CalibrateNgIn),
)
async def calibrate_ng(bridge: BridgeDep, request: Request) -> JSONResponse:
    """Choose and store the ROI's threshold (JSON body)."""
    reply = await bridge.submit("calibrate_ng", await json_object(request))
    return reply_response(reply)


def _infer_fields(
    role_id: str | None,
    roi_id: str | None,
    mm_per_px: str | None,
    shape: str | None,
    heatmap: str | None,
    require_calibration: str | None,
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
    role_id: RoleId = None,
    roi_id: RoiId = None,
    mm_per_px: MmPerPx = None,
    image: Image = None,
    shape: Shape = None,
    heatmap: Heatmap = None,
    require_calibration: RequireCalibration = None,
    recipe_id: RecipeField = None,
    model_key: ModelKey = None,
) -> JSONResponse:
    """Score one ROI crop: score, verdict, regions in mm², heatmap."""
    fields = _infer_fields(
        role_id, roi_id, mm_per_px, shape, heatmap, require_calibration, recipe_id, model_key
    )
    data = await read_image(bridge, image)
    return reply_response(await bridge.submit("infer", {**fields, "image": data}))


async def read_image(bridge: BridgeDep, image: UploadFile | None) -> bytes | None:
    """The one crop's bytes; None when none was sent (the parser says it is required)."""
    if image is None:
        return None
    (data,) = await bridge.read_images([image], "image")
    return data


@router.post("/predict", response_model=PredictOut, responses=INFER_ERRORS)
async def predict(
    bridge: BridgeDep,
    role_id: RoleId = None,
    roi_id: RoiId = None,
    mm_per_px: MmPerPx = None,
    image: Image = None,
    shape: Shape = None,
    heatmap: Heatmap = None,
    require_calibration: RequireCalibration = None,
    recipe_id: RecipeField = None,
    model_key: ModelKey = None,
) -> JSONResponse:
    """``infer`` with seed 001's response shape (for GUIs built on the old backend)."""
    fields = _infer_fields(
        role_id, roi_id, mm_per_px, shape, heatmap, require_calibration, recipe_id, model_key
    )
    data = await read_image(bridge, image)
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
    items: Annotated[
        str | None,
        WithJsonSchema(JSON_LIST_DOC),
        Form(description="JSON list of per-ROI infer fields (required)"),
    ] = None,
    images: Annotated[
        list[UploadFile] | None, File(description="ROI crops, in the order of items")
    ] = None,
    recipe_id: RecipeField = None,
) -> JSONResponse:
    listed = _items(items)
    if images:
        if not isinstance(listed, list) or len(images) != len(listed):
            count = len(listed) if isinstance(listed, list) else "no list of"
            raise bad_request(f"{len(images)} images were sent for {count} items")
        crops = await bridge.read_images(images, "images")
        listed = [
            {**item, "image": crop} if isinstance(item, dict) else item
            for item, crop in zip(listed, crops, strict=True)
        ]
    reply = await bridge.submit("infer_batch", {"items": listed, "recipe_id": recipe_id})
    return reply_response(reply)


def _items(text: str | None) -> Any:
    """The items as MQTT carries them (the parser checks them): a form carries JSON text."""
    if text is None:
        return None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise bad_request(f"items is not valid JSON: {exc.msg}") from None
    except (ValueError, RecursionError) as exc:  # 5000-digit numbers, deep nesting
        raise bad_request(f"items is not usable JSON: {type(exc).__name__}") from None
