"""Backbone weights kept in the data root: ``bdi-agent weights import`` and ``show``.

A line PC has no internet, so the hub is no source there. ``import`` checks a DINOv2
ViT-S/14 checkpoint, copies it to ``<data_root>/weights/`` with its sha256 and records
it in ``weights/default.json``. Which source the agent then uses (``effective_weights``):

1. ``BDI_BACKBONE_WEIGHTS`` when it names a file or ``random`` (environment or YAML),
   or is set to ``hub`` in the environment: an explicit choice always wins;
2. else (the setting left at its default ``hub``) the imported default, if any;
3. else the hub (the Hugging Face cache, then the network).

A ``hub`` written in the YAML file counts as the default: config templates list it.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from agent.ops.errors import OpsError
from agent.ops.snapshot import sha256_file
from engine.atomic import atomic_write, atomic_write_bytes, atomic_write_json

if TYPE_CHECKING:
    from agent.config import Settings
    from engine.features import FeatureExtractor

WEIGHTS_DIR = "weights"
DEFAULT_RECORD = "default.json"
SUFFIXES = (".pth", ".pt", ".safetensors")
ENV_NAME = "BDI_BACKBONE_WEIGHTS"


@dataclass(frozen=True)
class WeightsChoice:
    spec: str  # what the extractor gets: "hub" | "random" | a file path
    source: str  # "setting" | "imported" | "hub"
    detail: str  # the same in words, for `weights show` and `doctor`
    record: dict[str, Any] | None = None  # default.json, when the imported default is used


def weights_dir(data_root: Path) -> Path:
    return Path(data_root) / WEIGHTS_DIR


def read_default(data_root: Path) -> dict[str, Any] | None:
    """The imported default's record, None when nothing was imported."""
    import json

    path = weights_dir(data_root) / DEFAULT_RECORD
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (FileNotFoundError, NotADirectoryError):
        return None  # nothing imported (or no data root to import into)
    except (OSError, ValueError) as exc:
        raise OpsError(f"{path} is unreadable ({exc}); run `bdi-agent weights import`") from None
    if not isinstance(record, dict) or not isinstance(record.get("file"), str):
        raise OpsError(f"{path} names no weights file; run `bdi-agent weights import`")
    return record


def effective_weights(settings: Settings) -> WeightsChoice:
    """Where the backbone weights come from, following the order in the module doc."""
    value = settings.backbone_weights
    if value != "hub" or os.environ.get(ENV_NAME, "").strip():
        return WeightsChoice(value, "setting", f"{ENV_NAME}={value} (setting)")
    record_path = weights_dir(settings.data_root) / DEFAULT_RECORD
    try:
        record = read_default(settings.data_root)
    except OpsError as exc:
        # Never fall back to the hub behind the operator's back: the extractor is given
        # the broken record, fails to load it, and health/doctor say why.
        return WeightsChoice(str(record_path), "imported", str(exc))
    if record is None:
        return WeightsChoice("hub", "hub", "Hugging Face cache/hub (nothing imported)")
    file = weights_dir(settings.data_root) / Path(record["file"]).name
    return WeightsChoice(str(file), "imported", f"imported default ({record_path})", record)


# -- import ---------------------------------------------------------------------------


def import_weights(source: Path, data_root: Path) -> dict[str, Any]:
    """Check ``source``, copy it into the data root and make it the default.

    Returns the new ``default.json`` record. Raises ``OpsError`` with the reason when
    the file is not a loadable DINOv2 ViT-S/14 checkpoint.
    """
    source = Path(source).expanduser()
    if not source.is_file():
        raise OpsError(f"{source} is not a file")
    if source.suffix.lower() not in SUFFIXES:
        raise OpsError(f"{source.name}: expected a .pth or .safetensors checkpoint")
    file_sha = sha256_file(source)
    tensor_sha, layout = check_checkpoint(source)
    folder = weights_dir(data_root)
    folder.mkdir(parents=True, exist_ok=True)
    target = _target_name(folder, source, file_sha)
    if not (target.is_file() and sha256_file(target) == file_sha):
        _copy_checked(source, target, file_sha)
    atomic_write_bytes(
        target.with_name(target.name + ".sha256"), f"{file_sha}  {target.name}\n".encode()
    )
    record = {
        "file": target.name,
        "sha256": file_sha,
        "tensor_sha256": tensor_sha,
        "layout": layout,
        "size_bytes": target.stat().st_size,
        "source_path": str(source.resolve()),
        "imported_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    # Last, and one atomic rename: an agent starting meanwhile sees the old default or
    # the new one, never a record naming a file that is not there yet.
    atomic_write_json(folder / DEFAULT_RECORD, record)
    return record


def _target_name(folder: Path, source: Path, file_sha: str) -> Path:
    """The source's own name, unless another file of that name is there already.
    Never a hidden name: backups skip those (they are the store's temp files)."""
    stem = source.stem.lstrip(".") or "weights"
    target = folder / f"{stem}{source.suffix}"
    if target.exists() and sha256_file(target) != file_sha:
        target = folder / f"{stem}-{file_sha[:12]}{source.suffix}"
    return target


def _copy_checked(source: Path, target: Path, file_sha: str) -> None:
    digest = hashlib.sha256()

    def write(out: IO[bytes]) -> None:
        with open(source, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
                out.write(block)
        if digest.hexdigest() != file_sha:
            raise OpsError(f"{source} changed while it was being imported; import it again")

    atomic_write(target, write)


def check_checkpoint(path: Path) -> tuple[str, str]:
    """(tensor sha256 as the agent computes it, "timm" | "meta") of a valid checkpoint.

    Every key and every shape must be exactly ViT-S/14's: timm's own loader would
    silently resample a ViT-S/16 patch embedding or another position grid, giving a
    model that loads and computes nonsense.
    """
    import timm
    import torch

    from engine.backbone.weights import (
        MODEL_NAME,
        load_weights_file,
        read_state_dict,
        tensor_hash,
    )
    from engine.errors import ModelUnavailable

    try:
        raw = read_state_dict(path)
    except ModelUnavailable as exc:
        raise OpsError(_plain(exc)) from None
    # Built without initialising (meta device, then uninitialised memory): every tensor
    # is overwritten by the strict load below, and random init costs seconds on a CPU.
    with torch.device("meta"):
        model = timm.create_model(MODEL_NAME, pretrained=False, num_classes=0)
    model = model.to_empty(device="cpu")
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    layout = "meta" if "mask_token" in raw else "timm"
    tensors = {
        k: v
        for k, v in raw.items()
        if k != "mask_token" and not k.startswith(("head.", "dino_head"))
    }
    problems = _layout_problems(tensors, expected)
    if problems:
        raise OpsError(f"{path.name} is not a DINOv2 ViT-S/14 checkpoint: {'; '.join(problems)}")
    try:
        load_weights_file(model, path)  # the agent's own loader: what passes here loads
    except ModelUnavailable as exc:
        raise OpsError(_plain(exc)) from None
    return tensor_hash(model), layout


def _layout_problems(tensors: dict[str, Any], expected: dict[str, tuple[int, ...]]) -> list[str]:
    import torch

    def some(names: list[str]) -> str:
        more = f" and {len(names) - 3} more" if len(names) > 3 else ""
        return ", ".join(names[:3]) + more

    problems = []
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    if missing:
        problems.append(f"{len(missing)} missing key(s): {some(missing)}")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected key(s): {some(unexpected)}")
    wrong = []
    for key in sorted(set(expected) & set(tensors)):
        value = tensors[key]
        if not isinstance(value, torch.Tensor):
            wrong.append(f"{key} is not a tensor")
        elif tuple(value.shape) != expected[key]:
            wrong.append(f"{key} {list(value.shape)} instead of {list(expected[key])}")
        elif value.is_floating_point() and not bool(torch.isfinite(value).all()):
            wrong.append(f"{key} holds NaN/inf")
    if wrong:
        problems.append(f"{len(wrong)} wrong tensor(s): {some(wrong)}")
    return problems


def _plain(exc: Exception) -> str:
    """The engine's message without its advice on BDI_BACKBONE_WEIGHTS (not apt here)."""
    from engine.backbone.weights import HOW_TO_PROVIDE

    return str(exc).replace(f"; {HOW_TO_PROVIDE}", "")


# -- show -----------------------------------------------------------------------------


def describe_weights(settings: Settings, load: bool = True) -> dict[str, Any]:
    """Which weights the agent uses, from where, and their hashes.

    ``tensor_sha256`` (what every memory is bound to) needs the model loaded; ``error``
    says why it could not be.
    """
    choice = effective_weights(settings)
    out: dict[str, Any] = {"spec": choice.spec, "source": choice.source, "detail": choice.detail}
    if choice.record is not None:
        out.update(
            imported_at=choice.record.get("imported_at"),
            imported_from=choice.record.get("source_path"),
            layout=choice.record.get("layout"),
        )
    if choice.spec not in ("hub", "random"):
        path = Path(choice.spec).expanduser()
        out["file"] = str(path)
        if path.is_file():
            out["file_sha256"] = sha256_file(path)
            recorded = (choice.record or {}).get("sha256")
            if recorded and recorded != out["file_sha256"]:
                out["error"] = (
                    f"{path.name} differs from the sha256 recorded at import ({recorded[:16]}…): "
                    "the file was damaged or replaced; import it again"
                )
    if load and "error" not in out:
        out.update(_loaded(settings, choice.spec))
    return out


def _loaded(settings: Settings, spec: str) -> dict[str, Any]:
    from engine.errors import ModelUnavailable

    extractor = cpu_extractor(settings, spec)
    try:
        extractor.load()
    except ModelUnavailable as exc:
        return {"error": str(exc)}
    return {
        "label": extractor.weights.label,
        "tensor_sha256": extractor.weights.sha256,
        "feature_id": extractor.feature_id,
    }


def cpu_extractor(settings: Settings, spec: str) -> FeatureExtractor:
    """The agent's backbone with these weights, on the CPU (not loaded yet): the question
    here is which weights, not whether the GPU works (that is doctor's device check)."""
    from engine.features import BackboneConfig, FeatureExtractor

    return FeatureExtractor(
        BackboneConfig(
            weights=spec,
            device="cpu",
            # Only the weights are in question: no runtime trial.
            runtime="torch",
            precision="fp32",
            layers=tuple(settings.layers),
            threads=settings.threads,
            input_size=settings.input_size,
        )
    )
