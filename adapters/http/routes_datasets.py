"""Routes over what is stored for a ROI: manifest and the OK/NG sample sets."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query
from fastapi.responses import JSONResponse
from pydantic import WithJsonSchema

from adapters.http.routes_common import (
    COMMON_ERRORS,
    UPLOAD_ERRORS,
    BridgeDep,
    reply_response,
)
from adapters.http.routes_inspect import (
    Images,
    MmPerPx,
    RecipeField,
    RoiId,
    RoleId,
    store_samples,
)
from adapters.http.schemas import (
    ID_DOC,
    LABEL_DOC,
    TEXT_DOC,
    AddNgOut,
    DatasetClearOut,
    DatasetDeleteOut,
    DatasetListOut,
    FitOkOut,
    ManifestOut,
)

router = APIRouter(tags=["datasets"])

# Every parameter as sent, for the shared parser; the JSON schemas are for the document.
RoleQuery = Annotated[
    str | None, WithJsonSchema(ID_DOC), Query(description="inspection role (required)")
]
RoiQuery = Annotated[str | None, WithJsonSchema(ID_DOC), Query(description="ROI id (required)")]
ModelKeyQuery = Annotated[
    str | None, WithJsonSchema(ID_DOC), Query(description="memory name (default: roi_id)")
]
LabelQuery = Annotated[
    str | None, WithJsonSchema(LABEL_DOC), Query(description="ok or ng (required)")
]
FileQuery = Annotated[
    str | None,
    WithJsonSchema(TEXT_DOC),
    Query(description="bare file name from /datasets/list (required)"),
]


@router.get("/manifest", response_model=ManifestOut, responses=COMMON_ERRORS)
async def manifest(
    bridge: BridgeDep,
    role_id: RoleQuery = None,
    roi_id: RoiQuery = None,
    model_key: ModelKeyQuery = None,
) -> JSONResponse:
    """What is stored for a ROI: memory, calibration, dataset counts."""
    payload = {"role_id": role_id, "roi_id": roi_id, "model_key": model_key}
    return reply_response(await bridge.submit("manifest", payload))


@router.post("/datasets/ok/upload", response_model=FitOkOut, responses=UPLOAD_ERRORS)
async def upload_ok(
    bridge: BridgeDep,
    role_id: RoleId = None,
    roi_id: RoiId = None,
    mm_per_px: MmPerPx = None,
    images: Images = None,
    recipe_id: RecipeField = None,
) -> JSONResponse:
    """Store OK samples without rebuilding the memory (``fit_ok`` with memory_fit=false)."""
    fields = {
        "role_id": role_id,
        "roi_id": roi_id,
        "mm_per_px": mm_per_px,
        "memory_fit": False,
        "recipe_id": recipe_id,
    }
    return await store_samples(bridge, "fit_ok", fields, images)


@router.post("/datasets/ng/upload", response_model=AddNgOut, responses=UPLOAD_ERRORS)
async def upload_ng(
    bridge: BridgeDep,
    role_id: RoleId = None,
    roi_id: RoiId = None,
    mm_per_px: MmPerPx = None,
    images: Images = None,
    recipe_id: RecipeField = None,
) -> JSONResponse:
    """Store NG samples (``add_ng``)."""
    fields = {
        "role_id": role_id,
        "roi_id": roi_id,
        "mm_per_px": mm_per_px,
        "recipe_id": recipe_id,
    }
    return await store_samples(bridge, "add_ng", fields, images)


@router.get("/datasets/list", response_model=DatasetListOut, responses=COMMON_ERRORS)
async def dataset_list(
    bridge: BridgeDep,
    role_id: RoleQuery = None,
    roi_id: RoiQuery = None,
    label: Annotated[
        str | None, WithJsonSchema(LABEL_DOC), Query(description="both labels when absent")
    ] = None,
) -> JSONResponse:
    """The stored samples of a ROI, with their metadata."""
    payload = {"role_id": role_id, "roi_id": roi_id, "label": label}
    return reply_response(await bridge.submit("dataset_list", payload))


@router.delete("/datasets/file", response_model=DatasetDeleteOut, responses=COMMON_ERRORS)
async def dataset_delete(
    bridge: BridgeDep,
    role_id: RoleQuery = None,
    roi_id: RoiQuery = None,
    label: LabelQuery = None,
    file: FileQuery = None,
) -> JSONResponse:
    """Delete one sample (image and metadata); ``deleted`` is 0 when it was not there."""
    payload = {"role_id": role_id, "roi_id": roi_id, "label": label, "file": file}
    return reply_response(await bridge.submit("dataset_delete", payload))


@router.delete("/datasets/clear", response_model=DatasetClearOut, responses=COMMON_ERRORS)
async def dataset_clear(
    bridge: BridgeDep,
    role_id: RoleQuery = None,
    roi_id: RoiQuery = None,
    label: LabelQuery = None,
) -> JSONResponse:
    """Delete every sample of one label; the memory stays until the next fit."""
    payload = {"role_id": role_id, "roi_id": roi_id, "label": label}
    return reply_response(await bridge.submit("dataset_clear", payload))
