"""Everything a handler needs, built once by ``bootstrap``."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from agent.config import RoiDefaults, Settings
from agent.journal import Journal
from agent.model_cache import ModelCache
from engine.datasets import DatasetStore
from engine.errors import CorruptArtifact, EngineError
from engine.keys import RoiKey, normalise_recipe_id
from engine.patchcore import PatchCore
from engine.preprocess import DecodeLimits
from engine.store import ModelStore

if TYPE_CHECKING:
    from agent.replies import Reply

# Called after a ROI's memory or calibration changed (the MQTT adapter republishes state).
RoiListener = Callable[[RoiKey], None]
# Called with replies produced outside MQTT that MQTT must publish too (folder infers,
# dataset refits), and the fields to add to the envelope (e.g. the file path).
ReplyListener = Callable[["Reply", dict[str, Any]], None]


@dataclass
class Services:
    settings: Settings
    models: ModelStore
    datasets: DatasetStore
    cache: ModelCache
    core: PatchCore
    journal: Journal
    roi_defaults: dict[tuple[str, str, str], RoiDefaults] = field(default_factory=dict)
    roi_listeners: list[RoiListener] = field(default_factory=list)
    reply_listeners: list[ReplyListener] = field(default_factory=list)
    # Called with every reply the worker produces, whatever its source (verdict topics).
    reply_observers: list[Callable[[Reply], None]] = field(default_factory=list)
    last_fit_ts: str | None = None  # when a memory was last rebuilt by this agent
    model_state: str = "loading"  # loading | ready | error
    model_error: str | None = None  # why the backbone could not be loaded

    def model_unavailable(self) -> str | None:
        """None when the backbone is ready, else the reason a model command must wait."""
        if self.model_state == "ready":
            return None
        if self.model_state == "loading":
            return "the model is still loading; retry in a few seconds"
        return self.model_error or "the model could not be loaded"

    @property
    def limits(self) -> DecodeLimits:
        return DecodeLimits(self.settings.max_image_bytes, self.settings.max_image_pixels)

    def defaults_for(self, key: RoiKey) -> RoiDefaults | None:
        """``configs/rois.yaml``'s entry for the ROI: the recipe id normalised as on load,
        role and ROI ids as sent."""
        try:
            recipe = normalise_recipe_id(key.recipe_id)
        except EngineError:
            return None
        return self.roi_defaults.get((recipe, key.role_id, key.roi_id))

    def roi_changed(self, key: RoiKey) -> None:
        for listener in list(self.roi_listeners):
            listener(key)

    def publish(self, reply: Reply, extra: dict[str, Any] | None = None) -> None:
        for listener in list(self.reply_listeners):
            listener(reply, extra or {})

    def roi_state(self, key: RoiKey) -> dict[str, Any]:
        """The retained ``state`` payload of a ROI (contract section 5). An unreadable
        memory or calibration reads as none: the ROI cannot inspect or decide until it is
        refitted or recalibrated, which is what the line needs to know."""
        try:
            memory = self.cache.get(key)
        except CorruptArtifact:
            memory = None
        try:
            calibration = self.models.load_calibration(key)
        except CorruptArtifact:
            calibration = None
        return {
            "fitted": memory is not None,
            "coreset_size": memory.info.coreset_size if memory else None,
            "calibrated": calibration is not None,
            "threshold": calibration.get("threshold") if calibration else None,
            "model_version": memory.info.model_version if memory else None,
        }

    def roi_state_body(self, key: RoiKey) -> dict[str, Any]:
        """The ``state`` event's body: the ROI's state with its ids (the retained MQTT
        ``state`` topic carries the same)."""
        ids = {"recipe_id": key.recipe_id, "role_id": key.role_id, "roi_id": key.roi_id}
        return {**self.roi_state(key), **ids}
