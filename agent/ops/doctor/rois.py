"""Doctor's ROI checks: each memory and calibration readable and consistent.

The seeds' rows behind them: 400 "memoria no encontrada" (no memory), 428 (not
calibrated), 409 (mm_per_px mixed). Added: a memory built with other weights, input
size or layers than the agent now uses scores nonsense or is refused on every infer.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from agent.ops.doctor.check import FAIL, OK, WARN, Check, Context, worst
from engine.datasets import DatasetStore
from engine.errors import CorruptArtifact
from engine.keys import RoiKey
from engine.memory import SCALE_TOLERANCE, Memory
from engine.preprocess import PATCH
from engine.store import ModelStore

REFIT = "refit the ROI (bdi-agent fit / POST /fit_ok)"
RESTORE = "restore it (bdi-agent restore, or bdi-agent roi import from the PC that trained it)"


@dataclass
class Findings:
    statuses: list[str] = field(default_factory=list)
    messages: list[str] = field(default_factory=list)
    fixes: list[str] = field(default_factory=list)

    def add(self, status: str, message: str, fix: str = "") -> None:
        self.statuses.append(status)
        self.messages.append(message)
        if fix and fix not in self.fixes:
            self.fixes.append(fix)


def check_rois(context: Context) -> list[Check]:
    settings = context.settings
    models = ModelStore(settings.models_root)
    datasets = DatasetStore(settings.data_root / "datasets")
    keys = models.roi_keys()
    if not keys:
        return [
            Check(
                "rois",
                WARN,
                f"no trained ROI in {models.root} (infer answers not_fitted)",
                f"train one (bdi-agent fit), or {RESTORE}",
            )
        ]
    current = context.extractor.feature_id if context.extractor is not None else None
    return [check_roi(models, datasets, key, current, settings.input_size) for key in keys]


def roi_name(key: RoiKey) -> str:
    model = "" if key.model_key == key.roi_id else f" (model {key.model_key})"
    return f"roi {key.recipe_id}/{key.role_id}/{key.roi_id}{model}"


def check_roi(
    models: ModelStore,
    datasets: DatasetStore,
    key: RoiKey,
    feature_id: str | None,
    input_size: int,
) -> Check:
    """One ROI; ``feature_id`` is the loaded backbone's, None when it could not load."""
    found = Findings()
    try:
        memory = models.load_memory(key)
    except CorruptArtifact as exc:
        return Check(roi_name(key), FAIL, str(exc), f"{REFIT}, or {RESTORE}")
    if memory is None:  # removed since the listing
        return Check(roi_name(key), WARN, "memory removed while checking", "run doctor again")
    info = memory.info
    found.add(
        OK,
        f"memory {info.model_version}: {info.coreset_size} patches, grid "
        f"{memory.token_shape[0]}x{memory.token_shape[1]}, mm_per_px {info.mm_per_px}",
    )
    _check_features(found, memory, feature_id, input_size)
    _check_calibration(found, models, key, memory)
    scale = datasets.scale(key, "ok")
    if _differs(scale, info.mm_per_px):
        found.add(
            WARN,
            f"the OK dataset's mm_per_px {scale} differs from the memory's {info.mm_per_px}: "
            "the next fit_ok is refused with scale_mismatch (409)",
            "check the camera calibration; clear the dataset (dataset_clear) and add the "
            "images again at one scale",
        )
    return Check(
        roi_name(key), worst(found.statuses), "; ".join(found.messages), "; ".join(found.fixes)
    )


def _check_features(found: Findings, memory: Memory, feature_id: str | None, size: int) -> None:
    built = memory.info.feature_id
    expected_long = max(1, round(size / PATCH))
    if not built:
        found.add(
            WARN,
            "the memory does not record the weights it was built with (legacy)",
            f"{REFIT} to be sure",
        )
    elif feature_id is not None and built != feature_id:
        found.add(
            FAIL,
            describe_mismatch(built, feature_id),
            f"import the weights it was trained with (bdi-agent weights import), "
            f"set BDI_INPUT_SIZE/BDI_LAYERS back, or {REFIT}",
        )
        return
    if max(memory.token_shape) != expected_long:
        found.add(
            FAIL,
            f"token grid {list(memory.token_shape)} does not match input size "
            f"{size} (long side {expected_long} tokens): every infer is token_mismatch",
            f"set BDI_INPUT_SIZE to the size it was trained at, or {REFIT}",
        )


def describe_mismatch(built: str, current: str) -> str:
    """Which parts of two feature ids (``<weights sha16>-s<size>-l<layers>``) differ."""
    b_parts, c_parts = built.split("-s", 1), current.split("-s", 1)
    words = []
    if b_parts[0] != c_parts[0]:
        words.append(
            f"backbone weights {b_parts[0]} (loaded: {c_parts[0]}), so its scores mean nothing"
        )
    b_rest, c_rest = (b_parts[1:] or [""])[0], (c_parts[1:] or [""])[0]
    b_size, _, b_layers = b_rest.partition("-l")
    c_size, _, c_layers = c_rest.partition("-l")
    if b_size != c_size:
        words.append(f"input size {b_size} (agent: {c_size})")
    if b_layers != c_layers:
        words.append(f"layers {b_layers} (agent: {c_layers})")
    if not words:
        words.append(f"features {built} (agent: {current})")
    return "memory built with other " + ", ".join(words)


def _check_calibration(found: Findings, models: ModelStore, key: RoiKey, memory: Memory) -> None:
    try:
        calibration = models.load_calibration(key)
    except CorruptArtifact as exc:
        found.add(FAIL, str(exc), "calibrate again (bdi-agent calibrate / POST /calibrate_ng)")
        return
    if calibration is None:
        found.add(
            WARN,
            "not calibrated: is_anomaly is null, 428 when a decision is required",
            "calibrate (bdi-agent calibrate / POST /calibrate_ng)",
        )
        return
    found.add(OK, f"threshold {calibration['threshold']:.4g}")
    version = calibration.get("model_version")
    if version != memory.info.model_version:
        found.add(
            WARN,
            f"the calibration was chosen for memory {version}, the memory is now "
            f"{memory.info.model_version} (refit since)",
            "calibrate again",
        )
    scale = calibration.get("mm_per_px")
    if isinstance(scale, int | float) and _differs(float(scale), memory.info.mm_per_px):
        found.add(
            FAIL,
            f"the calibration's mm_per_px {scale} differs from the memory's "
            f"{memory.info.mm_per_px}: region areas in mm² are wrong",
            "calibrate again with the right --mm-per-px",
        )


def _differs(a: float | None, b: float | None) -> bool:
    if a is None or b is None or b <= 0:
        return False
    return abs(a - b) > SCALE_TOLERANCE * b
