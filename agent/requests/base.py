"""The fields every command shares, and the bases the command models build on.

One pydantic model per command (``agent.requests.teach``, ``.inspection``, ``.stored``)
declares its fields with the rules of ``agent.requests.rules``; ``to_command`` turns the
validated model into the frozen ``agent.commands`` dataclass the handlers take.

Absent, ``null`` and ``""`` are one thing for every field: an HTTP form sends an empty
field for one left blank, where MQTT leaves the key out or sends ``null``.
"""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import Mapping
from typing import Annotated, Any, ClassVar, Self

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationInfo, model_validator
from pydantic_core import PydanticCustomError

from agent.commands import Command, Health
from agent.requests.context import context_of
from agent.requests.images import Image, ImageFromPath, Images, ImagesFromPaths
from agent.requests.rules import Id, RecipeId, Scale, readable_request_id
from engine.errors import EngineError
from engine.keys import RoiKey


def _request_id(value: object) -> str:
    return readable_request_id(value) or str(uuid.uuid4())


class Request(BaseModel):
    """``request_id``: the caller's when it can be echoed, else a new UUID (never a
    refusal: the reply must reach the caller). ``recipe_id``: normalised, ``last`` refused."""

    model_config = ConfigDict(extra="ignore")  # fields of other commands are not errors
    command: ClassVar[type[Command]] = Health

    request_id: Annotated[str, BeforeValidator(_request_id)] = Field(
        default_factory=lambda: str(uuid.uuid4())
    )
    recipe_id: RecipeId = "default"

    @model_validator(mode="before")
    @classmethod
    def _blank_is_absent(cls, data: Any) -> Any:
        if not isinstance(data, Mapping):
            return data  # pydantic refuses it by its type
        return {k: v for k, v in data.items() if v is not None and not _blank(v)}

    def to_command(self, source: str, deadline: float | None) -> Command:
        """The command dataclass, from the fields it shares with this model."""
        wanted = {field.name for field in dataclasses.fields(self.command)}
        values = {name: getattr(self, name) for name in type(self).model_fields if name in wanted}
        return self.command(**values, source=source, deadline=deadline)


def _blank(value: object) -> bool:
    return isinstance(value, str) and value == ""


class RoiRequest(Request):
    role_id: Id
    roi_id: Id
    model_key: Id | None = None  # default: roi_id


class ScaledRequest(RoiRequest):
    """A command that needs the crop's scale: without ``mm_per_px`` it takes the ROI's
    default from ``configs/rois.yaml`` (``ParseContext.defaults``), else it is refused."""

    mm_per_px: Scale

    @model_validator(mode="before")
    @classmethod
    def _scale_from_roi_defaults(cls, data: Any, info: ValidationInfo) -> Any:
        lookup = context_of(info).defaults
        if lookup is None or not isinstance(data, Mapping) or not _absent(data, "mm_per_px"):
            return data
        key = _roi_key(data)  # None: the ids are refused, field by field
        defaults = lookup(key) if key is not None else None
        if defaults is None or defaults.mm_per_px is None:
            return data
        return {**data, "mm_per_px": defaults.mm_per_px}  # checked like one sent


def _absent(data: Mapping[str, Any], name: str) -> bool:
    value = data.get(name)
    return value is None or _blank(value)


def _roi_key(data: Mapping[str, Any]) -> RoiKey | None:
    recipe = data.get("recipe_id")
    if not (recipe is None or isinstance(recipe, str)):
        return None
    try:
        return RoiKey.of(data.get("role_id"), data.get("roi_id"), recipe)
    except EngineError:
        return None


class SamplesRequest(ScaledRequest):
    """Images to store or fit on: ``images`` (base64 or bytes), ``image_paths`` (under
    the image roots), and a single ``image`` / ``image_path`` too; at least one."""

    images: Images | None = None
    images_from_paths: ImagesFromPaths | None = Field(None, alias="image_paths")
    image: Image | None = None
    image_from_path: ImageFromPath = Field(None, alias="image_path")

    @model_validator(mode="after")
    def _gather_images(self) -> Self:
        single = self.image if self.image is not None else self.image_from_path
        gathered = (
            *(self.images or ()),
            *(self.images_from_paths or ()),
            *((single,) if single is not None else ()),
        )
        if not gathered:
            raise PydanticCustomError("bad_request", "images[1..N] is required")
        self.images = gathered
        return self
