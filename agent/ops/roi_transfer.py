"""``bdi-agent roi export`` / ``roi import``: one trained ROI from a lab PC to a line PC.

The archive (.tar.gz) holds ``roi.json`` (ids and provenance), ``memory.npz`` and
``calibration.json`` byte for byte as the store wrote them (so scores are identical),
and with ``--with-dataset`` the samples under ``dataset/{ok,ng}/``.

A memory is only meaningful with the backbone weights, input size and layers it was
built with (``MemoryInfo.feature_id``): import refuses a memory whose feature id is not
the importing agent's, unless forced.
"""

from __future__ import annotations

import json
import re
import tempfile
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

from agent.ops.errors import OpsError
from agent.ops.snapshot import (
    add_bytes,
    member_bytes,
    open_archive,
    open_gz_writer,
    read_json_member,
    read_memory_pair,
    read_whole,
)
from engine.atomic import atomic_write, atomic_write_bytes
from engine.datasets import IMAGE_SUFFIXES, LABELS, DatasetStore
from engine.errors import BadInput, CorruptArtifact
from engine.keys import RoiKey
from engine.memory import SCALE_TOLERANCE, Memory
from engine.store import ModelStore, read_memory

FORMAT = "bdi-roi/1"
MANIFEST, MEMORY, CALIBRATION = "roi.json", "memory.npz", "calibration.json"
# Sample names as the dataset store writes them (and nothing that could climb out).
SAMPLE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,200}$")


def export_roi(
    models: ModelStore, datasets: DatasetStore, key: RoiKey, destination: Path, with_dataset: bool
) -> dict[str, Any]:
    """Write the ROI's archive; returns its ``roi.json``."""
    from agent import __version__

    path = models.find_memory(key)
    pair = read_memory_pair(path) if path is not None else None
    if pair is None:
        raise OpsError(
            f"ROI {key.recipe_id}/{key.role_id}/{key.roi_id} has no memory in {models.root}"
        )
    memory_bytes, calibration_bytes = pair
    memory = _memory_from_bytes(memory_bytes, "the stored memory")
    samples = _samples(datasets, key) if with_dataset else {}
    info = memory.info
    manifest: dict[str, Any] = {
        "format": FORMAT,
        "role_id": key.role_id,
        "roi_id": key.roi_id,
        "recipe_id": key.recipe_id,
        "model_key": key.model_key,
        "feature_id": info.feature_id,
        "model_version": info.model_version,
        "mm_per_px": info.mm_per_px,
        "token_shape": list(memory.token_shape),
        "coreset_size": info.coreset_size,
        "calibrated": calibration_bytes is not None,
        "dataset": {
            label: sum(n.lower().endswith(IMAGE_SUFFIXES) for n in samples.get(label, {}))
            for label in LABELS
        }
        if with_dataset
        else None,
        "exported_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "agent_version": __version__,
    }

    def write(handle: IO[bytes]) -> None:
        with open_gz_writer(handle) as tar:
            add_bytes(tar, MANIFEST, _json_bytes(manifest))
            add_bytes(tar, MEMORY, memory_bytes)
            if calibration_bytes is not None:
                add_bytes(tar, CALIBRATION, calibration_bytes)
            for label, files in samples.items():
                for name, data in files.items():
                    add_bytes(tar, f"dataset/{label}/{name}", data)

    destination = Path(destination).expanduser()
    destination.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(destination, write)
    return manifest


def _samples(datasets: DatasetStore, key: RoiKey) -> dict[str, dict[str, bytes]]:
    """Each sample's image and metadata JSON, read whole (taken after the memory, so
    every sample the memory was fitted from is there)."""
    out: dict[str, dict[str, bytes]] = {}
    for label in LABELS:
        files: dict[str, bytes] = {}
        for sample in datasets.list(key, label):
            image = read_whole(sample.image)
            if image is None:
                continue  # deleted meanwhile
            meta = read_whole(sample.image.with_suffix(".json"))
            if meta is not None:
                files[sample.image.with_suffix(".json").name] = meta[0]
            files[sample.image.name] = image[0]
        out[label] = files
    return out


@dataclass
class ImportResult:
    key: RoiKey
    model_version: str
    replaced: str | None  # the model_version the import replaced
    calibrated: bool
    dataset: dict[str, int] | None
    forced: bool
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "role_id": self.key.role_id,
            "roi_id": self.key.roi_id,
            "recipe_id": self.key.recipe_id,
            "model_key": self.key.model_key,
            "model_version": self.model_version,
            "replaced": self.replaced,
            "calibrated": self.calibrated,
            "dataset": self.dataset,
            "forced": self.forced,
            "warnings": self.warnings,
        }


@dataclass
class _Archive:
    manifest: dict[str, Any]
    memory: bytes
    calibration: bytes | None
    samples: dict[str, dict[str, bytes]] | None


def import_roi(
    archive: Path,
    models: ModelStore,
    datasets: DatasetStore,
    feature_id: str | None,
    force: bool = False,
    unknown_reason: str = "",
) -> ImportResult:
    """Install an exported ROI. ``feature_id`` is the importing agent's extractor's
    (None when it could not be loaded: ``unknown_reason`` says why); a memory built
    with another, or not checkable, is refused unless ``force``."""
    content = _read_archive(Path(archive).expanduser())
    manifest = content.manifest
    try:
        key = RoiKey.of(
            manifest.get("role_id"),
            manifest.get("roi_id"),
            manifest.get("recipe_id"),
            manifest.get("model_key") or None,
        )
    except BadInput as exc:
        raise OpsError(f"{archive}: {MANIFEST} names no valid ROI ({exc})") from None
    memory = _memory_from_bytes(content.memory, f"{archive}'s memory")
    result = ImportResult(
        key, memory.info.model_version, None, content.calibration is not None, None, force
    )
    mismatch = _feature_mismatch(memory.info.feature_id, feature_id, unknown_reason)
    if mismatch and not force:
        raise OpsError(f"{archive} refused: {mismatch}. Use --force to import it anyway.")
    if mismatch:
        result.warnings.append(f"imported although {mismatch}")
    try:
        old = models.load_memory(key)
    except CorruptArtifact:
        old = None
    result.replaced = old.info.model_version if old is not None else None
    if content.samples is not None:
        result.dataset = _install_samples(datasets, key, content.samples)
    _install_model(models, key, content.memory, content.calibration)
    scale = datasets.scale(key, "ok")
    expected = memory.info.mm_per_px
    if scale is not None and expected and abs(scale - expected) > SCALE_TOLERANCE * expected:
        result.warnings.append(
            f"this PC's OK dataset for the ROI has mm_per_px {scale}, the imported memory "
            f"{expected}: the next fit_ok would be refused (scale_mismatch)"
        )
    return result


def _feature_mismatch(built: str, current: str | None, unknown_reason: str) -> str | None:
    from agent.ops.doctor.rois import describe_mismatch

    if current is None:
        reason = f" ({unknown_reason})" if unknown_reason else ""
        return f"the weights the memory needs could not be checked: no backbone loaded{reason}"
    if not built:
        return "the memory does not record the backbone weights it was built with"
    if built != current:
        return describe_mismatch(built, current)
    return None


def _install_model(
    models: ModelStore, key: RoiKey, memory: bytes, calibration: bytes | None
) -> None:
    # The old calibration goes first: between the writes a running agent sees an
    # uncalibrated ROI (no verdict), never the new memory judged by an old threshold.
    models.calibration_path(key).unlink(missing_ok=True)
    atomic_write_bytes(models.memory_path(key), memory)
    if calibration is not None:
        atomic_write_bytes(models.calibration_path(key), calibration)


def _install_samples(
    datasets: DatasetStore, key: RoiKey, samples: dict[str, dict[str, bytes]]
) -> dict[str, int]:
    """The archive's samples replace the ROI's: they are what the memory was fitted on."""
    counts = {}
    for label in LABELS:
        datasets.clear(key, label)
        folder = datasets.folder(key, label)
        files = samples.get(label, {})
        # Metadata before images, as the dataset store writes them.
        for name in sorted(files, key=lambda n: not n.endswith(".json")):
            atomic_write_bytes(folder / name, files[name])
        counts[label] = sum(n.lower().endswith(IMAGE_SUFFIXES) for n in files)
    return counts


def _read_archive(path: Path) -> _Archive:
    """Only the expected members, each a regular file with a safe name; read into
    memory, never extracted, so no member name can reach the file system."""
    manifest: dict[str, Any] | None = None
    memory = calibration = None
    samples: dict[str, dict[str, bytes]] | None = None
    with open_archive(path) as tar:
        for member in tar.getmembers():
            name = member.name.removeprefix("./")
            if member.isdir():
                continue
            if not member.isfile():
                raise OpsError(f"{path} refused: {member.name} is not a regular file")
            if name == MANIFEST:
                manifest = read_json_member(tar, member)
            elif name == MEMORY:
                memory = member_bytes(tar, member)
            elif name == CALIBRATION:
                calibration = member_bytes(tar, member)
            elif _sample_member(name):
                _, label, file = name.split("/")
                samples = samples if samples is not None else {label: {} for label in LABELS}
                samples[label][file] = member_bytes(tar, member)
            else:
                raise OpsError(
                    f"{path} refused: unexpected member {member.name!r} "
                    "(not a `bdi-agent roi export` archive)"
                )
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT or memory is None:
        raise OpsError(
            f"{path} is not a `bdi-agent roi export` archive ({MANIFEST} or {MEMORY} missing)"
        )
    if calibration is not None:
        _check_calibration(path, calibration)
    return _Archive(manifest, memory, calibration, samples)


def _sample_member(name: str) -> bool:
    parts = name.split("/")
    return (
        len(parts) == 3
        and parts[0] == "dataset"
        and parts[1] in LABELS
        and bool(SAMPLE_NAME.match(parts[2]))
        and parts[2].lower().endswith((*IMAGE_SUFFIXES, ".json"))
    )


def _check_calibration(path: Path, data: bytes) -> None:
    try:
        calibration = json.loads(data)
    except ValueError as exc:
        raise OpsError(f"{path}: {CALIBRATION} is not valid JSON ({exc})") from None
    if not isinstance(calibration, dict) or not isinstance(
        calibration.get("threshold"), int | float
    ):
        raise OpsError(f"{path}: {CALIBRATION} has no numeric threshold")


def _memory_from_bytes(data: bytes, what: str) -> Memory:
    """Parsed by the store's own reader, so what passes here is what the agent loads."""
    with tempfile.TemporaryDirectory(prefix="bdi-roi-") as tmp:
        path = Path(tmp) / MEMORY
        path.write_bytes(data)
        try:
            return read_memory(path)
        except CorruptArtifact as exc:
            raise OpsError(f"{what} is unreadable ({exc})") from None


def _json_bytes(payload: dict[str, Any]) -> bytes:
    return json.dumps(payload, indent=2, ensure_ascii=False).encode() + b"\n"
