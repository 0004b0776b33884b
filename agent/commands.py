"""One frozen dataclass per command of the contract (section 2).

Adapters build these (through ``agent.parsing``); handlers consume them. Images are
carried as the raw bytes the client sent; decoding happens in the worker.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar


@dataclass(frozen=True, kw_only=True)
class Command:
    name: ClassVar[str]
    mutating: ClassVar[bool] = False
    request_id: str
    recipe_id: str = "default"
    source: str = "cli"  # mqtt | folder | http | dataset | cli
    deadline: float | None = None  # time.monotonic() after which the caller gave up


@dataclass(frozen=True, kw_only=True)
class RoiCommand(Command):
    role_id: str
    roi_id: str
    model_key: str | None = None


@dataclass(frozen=True, kw_only=True)
class Health(Command):
    name = "health"


@dataclass(frozen=True, kw_only=True)
class FitOk(RoiCommand):
    name = "fit_ok"
    mutating = True
    mm_per_px: float
    images: tuple[bytes, ...]
    memory_fit: bool = True
    shape: dict[str, Any] | None = None


@dataclass(frozen=True, kw_only=True)
class AddNg(RoiCommand):
    name = "add_ng"
    mutating = True
    mm_per_px: float
    images: tuple[bytes, ...]


@dataclass(frozen=True, kw_only=True)
class CalibrateNg(RoiCommand):
    name = "calibrate_ng"
    mutating = True
    ok_scores: tuple[float, ...] | None = None
    ng_scores: tuple[float, ...] | None = None
    mm_per_px: float | None = None
    area_mm2_thr: float | None = None
    score_percentile: float | None = None
    # Images to self-score instead of the stored samples (a dataset folder the agent does
    # not own); OK images that built the memory are scored leave-one-out.
    ok_images: tuple[bytes, ...] | None = None
    ng_images: tuple[bytes, ...] | None = None


@dataclass(frozen=True, kw_only=True)
class Refit(RoiCommand):
    """Rebuild the memory from the ROI's stored OK samples (after ``memory_fit=false``
    stores, e.g. a debounced burst of folder samples). Same result body as ``fit_ok``."""

    name = "refit"
    mutating = True
    mm_per_px: float | None = None  # None: the OK dataset's own scale
    shape: dict[str, Any] | None = None


@dataclass(frozen=True, kw_only=True)
class FitImages(RoiCommand):
    """Build the memory from these images only, storing nothing (a dataset folder owned by
    someone else, e.g. the GUI). Same result body as ``fit_ok`` with ``ok_added`` 0."""

    name = "fit_images"
    mutating = True
    mm_per_px: float
    images: tuple[bytes, ...]
    shape: dict[str, Any] | None = None
    names: tuple[str, ...] = ()  # the images' file names, only for error messages


@dataclass(frozen=True, kw_only=True)
class Infer(RoiCommand):
    name = "infer"
    mm_per_px: float
    image: bytes
    shape: dict[str, Any] | None = None
    heatmap: bool = True
    require_calibration: bool = False


@dataclass(frozen=True, kw_only=True)
class InferBatch(Command):
    name = "infer_batch"
    items: tuple[Infer, ...]


@dataclass(frozen=True, kw_only=True)
class Manifest(RoiCommand):
    name = "manifest"


@dataclass(frozen=True, kw_only=True)
class DatasetList(RoiCommand):
    name = "dataset_list"
    label: str | None = None  # None: both labels


@dataclass(frozen=True, kw_only=True)
class DatasetDelete(RoiCommand):
    name = "dataset_delete"
    mutating = True
    label: str
    file: str


@dataclass(frozen=True, kw_only=True)
class DatasetClear(RoiCommand):
    name = "dataset_clear"
    mutating = True
    label: str


COMMANDS: dict[str, type[Command]] = {
    cls.name: cls
    for cls in (
        Health,
        FitOk,
        AddNg,
        CalibrateNg,
        Refit,
        FitImages,
        Infer,
        InferBatch,
        Manifest,
        DatasetList,
        DatasetDelete,
        DatasetClear,
    )
}
COMMANDS["send_ng"] = AddNg  # the seeds' name
