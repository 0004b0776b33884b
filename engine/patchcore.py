"""PatchCore on DINOv2 patch tokens: fit a memory, score images against it.

core = PatchCore(FeatureExtractor(BackboneConfig(weights="random")))
memory = core.fit([Sample.from_bytes(png) for png in ok_pngs], mm_per_px=0.2)
prediction = core.predict(memory, [decode_image(png)])[0]
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from engine.coreset import CoresetConfig, coreset_size, greedy_k_center
from engine.embedding_cache import EmbeddingCache
from engine.errors import BadInput, TokenMismatch
from engine.features import FeatureExtractor
from engine.index import NearestNeighbourIndex
from engine.memory import Memory, MemoryInfo, new_model_version, utc_now_iso
from engine.preprocess import DEFAULT_LIMITS, DecodeLimits, cv2_module, decode_image, resize_to_grid
from engine.roi_mask import ShapeSpec, parse_shape, shape_mask
from engine.scoring import anomaly_map, masked_score

Checkpoint = Callable[[], None]
Progress = Callable[[str, int, int], None]  # (stage, done, total)
OK_SCALE_SAMPLES = 8  # fit images scored leave-one-out to measure the memory's OK scale


@dataclass(frozen=True)
class PatchCoreConfig:
    coreset: CoresetConfig = field(default_factory=CoresetConfig)
    metric: str = "cosine"
    blur_sigma: float = 4.0
    max_batch: int = 8  # images per backbone pass when scoring
    # Images per backbone pass when fitting: the worker serves waiting infers between
    # chunks, so a small chunk keeps infer latency low during a long fit.
    fit_chunk: int = 1
    limits: DecodeLimits = field(default_factory=DecodeLimits)


@dataclass(frozen=True)
class Sample:
    """One image: the sha256 of its bytes and a way to get its RGB pixels."""

    sha256: str
    load: Callable[[], np.ndarray]

    @classmethod
    def from_bytes(cls, data: bytes, limits: DecodeLimits = DEFAULT_LIMITS) -> Sample:
        image = decode_image(data, limits)  # decoded now: bad bytes fail before any work
        return cls(hashlib.sha256(data).hexdigest(), lambda: image)


@dataclass(frozen=True)
class Embedded:
    """Patch embeddings of one image: (h, w, C) float32 or float16, and its (H, W)."""

    features: np.ndarray
    image_hw: tuple[int, int]

    @property
    def token_shape(self) -> tuple[int, int]:
        return (int(self.features.shape[0]), int(self.features.shape[1]))


@dataclass
class Prediction:
    """score: max of ``amap`` inside the ROI; amap: (H, W) float32, zero outside it."""

    score: float
    amap: np.ndarray
    mask: np.ndarray | None
    token_shape: tuple[int, int]
    timings_ms: dict[str, float] = field(default_factory=dict)


class PatchCore:
    def __init__(
        self,
        extractor: FeatureExtractor,
        config: PatchCoreConfig | None = None,
        cache: EmbeddingCache | None = None,
        progress: Progress | None = None,
    ) -> None:
        self.extractor = extractor
        self.config = config or PatchCoreConfig()
        self.cache = cache
        self.progress = progress  # long fits report here (the CLI prints it)

    def _report(self, stage: str, done: int, total: int) -> None:
        if self.progress is not None:
            self.progress(stage, done, total)

    # -- embeddings ---------------------------------------------------------------

    def embed(self, images: Sequence[np.ndarray]) -> list[Embedded]:
        """RGB images of any size -> their patch embeddings, in ``max_batch`` backbone passes
        (images that land on the same token grid share a pass)."""
        input_size = self.extractor.config.input_size
        resized = [resize_to_grid(image, input_size) for image in images]
        out: list[Embedded | None] = [None] * len(images)
        by_grid: dict[tuple[int, ...], list[int]] = {}
        for i, image in enumerate(resized):
            by_grid.setdefault(image.shape, []).append(i)
        step = max(1, self.config.max_batch)
        for members in by_grid.values():
            for start in range(0, len(members), step):
                chunk = members[start : start + step]
                feats = self.extractor.extract(np.stack([resized[i] for i in chunk]))
                for i, feat in zip(chunk, feats, strict=True):
                    out[i] = Embedded(feat, (images[i].shape[0], images[i].shape[1]))
        return [e for e in out if e is not None]

    def embed_samples(
        self, samples: Sequence[Sample], checkpoint: Checkpoint | None = None
    ) -> list[Embedded]:
        """Embeddings of stored samples, from the cache where possible; the backbone runs
        on the others in chunks of ``fit_chunk``, with ``checkpoint`` called between."""
        # Keyed by runtime too: embeddings of another runtime are close, not equal, and a
        # memory must be built from the features of the runtime it records.
        feature_id = self.extractor.cache_id
        out: list[Embedded | None] = [None] * len(samples)
        missing = []
        for i, sample in enumerate(samples):
            cached = self.cache.get(feature_id, sample.sha256) if self.cache else None
            if cached is not None:
                out[i] = Embedded(cached[0], cached[1])
            else:
                missing.append(i)
        step = max(1, self.config.fit_chunk)
        self._report("embedding", len(samples) - len(missing), len(samples))
        for start in range(0, len(missing), step):
            chunk = missing[start : start + step]
            for i, embedded in zip(
                chunk, self.embed([samples[i].load() for i in chunk]), strict=True
            ):
                features = embedded.features.astype(np.float16)
                out[i] = Embedded(features, embedded.image_hw)
                if self.cache is not None:
                    self.cache.put(feature_id, samples[i].sha256, features, embedded.image_hw)
            self._report(
                "embedding", len(samples) - len(missing) + start + len(chunk), len(samples)
            )
            if checkpoint is not None:
                checkpoint()
        return [e for e in out if e is not None]

    # -- fit ------------------------------------------------------------------------

    def fit(
        self,
        samples: Sequence[Sample],
        mm_per_px: float | None,
        shape: ShapeSpec | str | None = None,
        checkpoint: Checkpoint | None = None,
    ) -> Memory:
        """Build a memory from OK samples. Patches outside ``shape`` are left out."""
        if not samples:
            raise BadInput("fit needs at least one image")
        spec = parse_shape(shape)
        embedded = self.embed_samples(samples, checkpoint)
        token_shape = _common_grid(embedded)
        patches, sources = [], []
        for i, item in enumerate(embedded):
            keep = token_mask(spec, item.image_hw, token_shape)
            patches.append(item.features[keep])
            sources.append(np.full(int(keep.sum()), i, dtype=np.int32))
        all_patches = np.concatenate(patches).astype(np.float16, copy=False)
        all_sources = np.concatenate(sources)
        cfg = self.config.coreset
        size = coreset_size(len(all_patches), cfg)
        self._report("coreset", 0, size)
        chosen = greedy_k_center(
            all_patches, size, cfg.projection_dim, cfg.seed, checkpoint=checkpoint
        )
        self._report("coreset", size, size)
        info = MemoryInfo(
            model_version=new_model_version(),
            created_at=utc_now_iso(),
            mm_per_px=mm_per_px,
            n_embeddings=len(all_patches),
            coreset_size=len(chosen),
            coreset_rate_requested=cfg.rate,
            coreset_rate_applied=len(chosen) / len(all_patches),
            metric=self.config.metric,
            feature_id=self.extractor.feature_id,
            runtime=self.extractor.runtime_id,
            n_samples=len(samples),
            shape=spec,
            sample_sha256=[s.sha256 for s in samples],
        )
        memory = Memory(all_patches[chosen], all_sources[chosen], token_shape, info)
        picks = np.linspace(0, len(embedded) - 1, min(OK_SCALE_SAMPLES, len(embedded)))
        loo = [
            self.predict_embedded(memory, embedded[int(i)], spec, exclude_source=int(i)).score
            for i in np.unique(picks.round().astype(int))
        ]
        return memory.with_info(ok_scale=float(max(loo)))

    # -- scoring --------------------------------------------------------------------

    def predict(
        self, memory: Memory, images: Sequence[np.ndarray], shape: ShapeSpec | str | None = None
    ) -> list[Prediction]:
        """Score RGB images against one memory (one backbone pass per ``max_batch``)."""
        spec = parse_shape(shape)
        start = time.perf_counter()
        embedded = self.embed(images)
        backbone_ms = (time.perf_counter() - start) * 1000 / max(1, len(images))
        out = []
        for item in embedded:
            prediction = self.predict_embedded(memory, item, spec)
            prediction.timings_ms["backbone"] = backbone_ms
            out.append(prediction)
        return out

    def predict_embedded(
        self,
        memory: Memory,
        embedded: Embedded,
        shape: ShapeSpec | None = None,
        exclude_source: int | None = None,
    ) -> Prediction:
        """Score one embedded image. ``exclude_source`` ignores the memory rows that came
        from that fit sample (leave-one-out scores of the training images)."""
        if embedded.token_shape != memory.token_shape:
            raise TokenMismatch(
                f"image token grid {list(embedded.token_shape)} differs from the memory's "
                f"{list(memory.token_shape)}; send crops of the size the ROI was trained on"
            )
        timings: dict[str, float] = {}
        start = time.perf_counter()
        queries = embedded.features.reshape(-1, embedded.features.shape[-1])
        if exclude_source is None:
            distances = memory.index.nearest_distance(queries)
        else:
            distances = _distances_excluding(memory, queries, exclude_source)
        timings["knn"] = (time.perf_counter() - start) * 1000
        start = time.perf_counter()
        amap = anomaly_map(
            distances.reshape(memory.token_shape), embedded.image_hw, self.config.blur_sigma
        )
        mask = None if shape is None else shape_mask(shape, *embedded.image_hw)
        masked, score = masked_score(amap, mask)
        timings["map"] = (time.perf_counter() - start) * 1000
        return Prediction(score, masked, mask, memory.token_shape, timings)

    def loo_scores(
        self,
        memory: Memory,
        samples: Sequence[Sample],
        shape: ShapeSpec | str | None = None,
        checkpoint: Checkpoint | None = None,
    ) -> list[float]:
        """Image scores of stored samples; a sample that helped build the memory is scored
        without its own rows (leave-one-out), so OK scores are not flattered."""
        spec = parse_shape(shape)
        source_of = {sha: i for i, sha in enumerate(memory.info.sample_sha256)}
        embedded = self.embed_samples(samples, checkpoint)
        return [
            self.predict_embedded(memory, item, spec, source_of.get(sample.sha256)).score
            for sample, item in zip(samples, embedded, strict=True)
        ]


def token_mask(
    shape: ShapeSpec | None, image_hw: tuple[int, int], token_shape: tuple[int, int]
) -> np.ndarray:
    """(rows, cols) bool: patches whose cell overlaps the ROI at all. Border patches stay
    in the memory so that the ROI's edge is not flagged at inference."""
    if shape is None:
        return np.ones(token_shape, dtype=bool)
    cv2 = cv2_module()
    pixels = shape_mask(shape, *image_hw).astype(np.float32)
    coverage = cv2.resize(pixels, (token_shape[1], token_shape[0]), interpolation=cv2.INTER_AREA)
    return np.asarray(coverage > 0)


def _common_grid(embedded: Sequence[Embedded]) -> tuple[int, int]:
    grids = sorted({e.token_shape for e in embedded})
    if len(grids) > 1:
        raise TokenMismatch(
            f"fit images fall on different token grids {[list(g) for g in grids]}; "
            "all crops of one ROI must have the same size"
        )
    return grids[0]


def _distances_excluding(memory: Memory, queries: np.ndarray, source: int) -> np.ndarray:
    """(Q, D) -> (Q,) distance to the nearest memory row not taken from ``source``."""
    index = memory.index
    others = memory.sources != source
    if not others.any():
        # A single-sample memory: the nearest *other* patch is the best stand-in.
        distances, _ = index.search(queries, min(2, index.size))
        return np.asarray(distances[:, -1])
    k = min(16, index.size)
    distances, ids = index.search(queries, k)
    usable = others[ids]
    found = usable.any(axis=1)
    out = distances[np.arange(len(queries)), usable.argmax(axis=1)]
    if not found.all():
        fallback = NearestNeighbourIndex.build(memory.bank[others], memory.info.metric)
        out[~found] = fallback.nearest_distance(queries[~found])
    return np.asarray(out, dtype=np.float32)
