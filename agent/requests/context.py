"""What parsing needs besides the payload: where ``image_path`` may read, how much, and
the per-ROI defaults of ``configs/rois.yaml``."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from pydantic import ValidationInfo

from engine.keys import RoiKey

if TYPE_CHECKING:
    from agent.config import RoiDefaults

# ``Services.defaults_for``: the ROI's defaults, or None.
DefaultsLookup = Callable[[RoiKey], "RoiDefaults | None"]


@dataclass(frozen=True)
class ParseContext:
    image_roots: tuple[Path, ...] = ()
    max_image_bytes: int | None = None  # a file under image_roots over this is not read
    defaults: DefaultsLookup | None = None


NO_CONTEXT = ParseContext()


def context_of(info: ValidationInfo) -> ParseContext:
    context = info.context
    return context if isinstance(context, ParseContext) else NO_CONTEXT
