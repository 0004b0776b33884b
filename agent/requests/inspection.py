"""Commands that inspect: one ROI crop (``infer``), or several ROIs of a part at once."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any, Self

from pydantic import Field, ValidationInfo, model_validator
from pydantic_core import PydanticCustomError

from agent.commands import Command, Infer, InferBatch
from agent.errors import AgentError, bad_request
from agent.requests.base import Request, ScaledRequest
from agent.requests.images import Image, ImageFromPath
from agent.requests.rules import Flag, Shape, readable_request_id, rule_with_info

# The most items any configuration allows (``max_batch_items`` is checked by the worker):
# past this, a batch is refused before its images are even decoded from base64.
MAX_BATCH_ITEMS = 256


class InferRequest(ScaledRequest):
    command = Infer
    image: Image | None = None
    image_from_path: ImageFromPath = Field(None, alias="image_path")
    shape: Shape = None
    heatmap: Flag = True
    require_calibration: Flag = False

    @model_validator(mode="after")
    def _one_image(self) -> Self:
        if self.image is None:
            if self.image_from_path is None:
                raise PydanticCustomError("bad_request", "image (base64) or image_path is required")
            self.image = self.image_from_path
        return self


def _items(value: object, info: ValidationInfo) -> list[dict[str, Any]]:
    """The batch's items, each an ``infer`` input that takes the batch's ``recipe_id``
    unless it has its own, and ``<batch request_id>/<index>`` as its request id unless it
    has its own."""
    if not isinstance(value, list | tuple) or not value:
        raise bad_request("items must be a non-empty list of infer inputs")
    if len(value) > MAX_BATCH_ITEMS:
        raise AgentError(
            "payload_too_large", f"items holds {len(value)} entries, at most {MAX_BATCH_ITEMS}"
        )
    batch_id = info.data.get("request_id", "batch")
    items = []
    for i, item in enumerate(value):
        if not isinstance(item, Mapping):
            raise bad_request(f"items[{i}] must be an object")
        own_id = readable_request_id(item.get("request_id"))
        merged = {"recipe_id": info.data.get("recipe_id"), **item}
        items.append({**merged, "request_id": own_id or f"{batch_id}/{i}"})
    return items


class InferBatchRequest(Request):
    command = InferBatch
    items: Annotated[list[InferRequest], rule_with_info(_items)]

    def to_command(self, source: str, deadline: float | None) -> Command:
        items = tuple(item.to_command(source, deadline) for item in self.items)
        return InferBatch(
            request_id=self.request_id,
            recipe_id=self.recipe_id,
            source=source,
            deadline=deadline,
            items=items,  # type: ignore[arg-type]
        )
