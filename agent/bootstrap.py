"""The one place that wires settings, engine, store, worker, bus and adapters."""

from __future__ import annotations

import contextlib
import threading
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
import structlog

from agent.announcer import Announcer
from agent.bus import Bus
from agent.config import Settings, load_roi_defaults
from agent.delivery import Delivery
from agent.events import Events
from agent.journal import Journal
from agent.metrics import Metrics
from agent.model_cache import ModelCache
from agent.ops.weights import effective_weights
from agent.recent import RecentVerdicts
from agent.services import Services
from agent.stats import Stats
from agent.worker import Worker
from engine.backbone.trial import REFERENCE_IMAGES
from engine.coreset import CoresetConfig
from engine.datasets import DatasetStore
from engine.embedding_cache import EmbeddingCache
from engine.errors import EngineError, ModelUnavailable
from engine.features import BackboneConfig, FeatureExtractor
from engine.patchcore import PatchCore, PatchCoreConfig
from engine.preprocess import DecodeLimits, decode_image
from engine.store import ModelStore

log = structlog.get_logger("agent")


class Adapter(Protocol):
    def start(self) -> None: ...
    def stop(self) -> None: ...


@dataclass
class Agent:
    settings: Settings
    services: Services
    bus: Bus
    worker: Worker
    adapters: list[Adapter] = field(default_factory=list)

    def start(self, load_model: bool = True) -> None:
        self.bus.delivery.start()
        self.worker.start()
        self.bus.health_changed()  # "loading" until the model is ready
        if load_model:
            threading.Thread(target=self.load_model, name="model-loader", daemon=True).start()
        for adapter in self.adapters:
            adapter.start()

    def load_model(self) -> None:
        services = self.services
        try:
            services.core.extractor.load()
        except ModelUnavailable as exc:
            services.model_state, services.model_error = "error", str(exc)
            log.error("model unavailable", reason=str(exc))
            self._model_changed()
            return
        except Exception as exc:  # a broken install must not kill the adapters
            services.model_state = "error"
            services.model_error = f"model failed to load ({type(exc).__name__}: {exc})"
            log.exception("model failed to load")
            self._model_changed()
            return
        services.model_state = "ready"
        self._model_changed()
        extractor = services.core.extractor
        choice = extractor.choice
        log.info(
            "model loaded",
            weights=extractor.weights.label,
            weights_sha256=extractor.weights.sha256[:16],
            device=extractor.device,
            runtime=choice.runtime,
            precision=choice.precision,
            runtime_reason=choice.reason,
            runtime_source=choice.source,
            trial_s=choice.trial_s,
        )

    def _model_changed(self) -> None:
        """Serve the commands that waited for the model (or refuse them), and say so."""
        self.worker.model_changed()
        self.bus.health_changed()

    def stop(self, timeout: float | None = 60.0) -> None:
        for adapter in reversed(self.adapters):
            adapter.stop()
        self.worker.stop(timeout)
        self.bus.delivery.stop()
        self.services.journal.close()


def build_engine(settings: Settings) -> PatchCore:
    backbone = BackboneConfig(
        # The setting, else the default imported into the data root, else the hub.
        weights=effective_weights(settings).spec,
        device=settings.device,
        runtime=settings.runtime,
        precision=settings.precision,
        layers=tuple(settings.layers),
        threads=settings.threads,
        input_size=settings.input_size,
        runtime_dir=settings.runtime_root,
        trial_budget_s=settings.runtime_trial_s,
    )
    config = PatchCoreConfig(
        coreset=CoresetConfig(
            rate=settings.coreset_rate,
            min_size=settings.coreset_min,
            max_size=settings.coreset_max,
            projection_dim=settings.projection_dim,
        ),
        metric=settings.metric,
        blur_sigma=settings.blur_sigma,
        max_batch=settings.max_batch,
        limits=DecodeLimits(settings.max_image_bytes, settings.max_image_pixels),
    )
    cache = EmbeddingCache(settings.data_root / "cache" / "embeddings")
    datasets = DatasetStore(settings.data_root / "datasets")

    def stored_ok_crops() -> list[np.ndarray]:
        """The fidelity gate's reference images: real OK crops where any are stored."""
        crops = []
        for path in datasets.first_images("ok", REFERENCE_IMAGES):
            with contextlib.suppress(OSError, EngineError):
                crops.append(decode_image(path.read_bytes(), config.limits))
        return crops

    return PatchCore(FeatureExtractor(backbone, stored_ok_crops), config, cache)


def bootstrap(
    settings: Settings,
    core: PatchCore | None = None,
    adapters: list[Adapter] | None = None,
) -> Agent:
    """Build an agent; nothing starts until ``Agent.start()``.

    ``core`` lets tests share one loaded backbone between several agents.
    """
    models = ModelStore(settings.models_root)
    services = Services(
        settings=settings,
        models=models,
        datasets=DatasetStore(settings.data_root / "datasets"),
        cache=ModelCache(models),
        core=core or build_engine(settings),
        journal=Journal(settings.data_root / "journal" / "requests.sqlite"),
        roi_defaults=load_roi_defaults(settings.rois_file),
    )
    if services.core.extractor.loaded:
        services.model_state = "ready"
    stats = Stats()
    metrics = Metrics()
    delivery = Delivery()
    worker = Worker(services, stats, metrics, delivery)
    events = Events(delivery, settings.events_backlog_bytes)
    recent = RecentVerdicts(settings.recent_max, settings.recent_max_bytes)
    bus = Bus(services, worker, stats, metrics, delivery, events, recent)
    Announcer(services, events, recent, delivery).attach()
    return Agent(settings, services, bus, worker, list(adapters or []))
