"""The operations subcommands of ``bdi-agent``: weights, doctor, backup, restore, roi,
runtime.

Output is for a person at a terminal (``--json`` where a machine may read it). Exit
codes: 0 done, 1 refused or a check failed, 2 bad usage or configuration.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agent.ops.errors import OpsError

if TYPE_CHECKING:
    from agent.config import Settings

OPS_COMMANDS = frozenset({"weights", "doctor", "backup", "restore", "roi", "runtime"})


def add_parsers(sub: Any) -> None:
    weights = sub.add_parser("weights", help="import or show the backbone weights")
    wsub = weights.add_subparsers(dest="weights_command", required=True)
    imp = wsub.add_parser(
        "import", help="check a DINOv2 ViT-S/14 .pth/.safetensors and make it the default"
    )
    imp.add_argument("file", type=Path)
    show = wsub.add_parser("show", help="which weights are in use, their source and hash")
    show.add_argument("--json", action="store_true", help="one JSON object")

    doctor = sub.add_parser("doctor", help="check this PC: weights, device, broker, data, ROIs")
    doctor.add_argument("--json", action="store_true", help="one JSON object")
    doctor.add_argument("--timeout", type=float, default=5.0, help="broker timeout (s)")

    backup = sub.add_parser("backup", help="snapshot models, datasets, weights, journal")
    backup.add_argument("file", type=Path, help="FILE.tar.gz")
    restore = sub.add_parser("restore", help="put a backup back (stop the agent first)")
    restore.add_argument("file", type=Path, help="FILE.tar.gz")
    restore.add_argument("--force", action="store_true", help="restore over a non-empty data root")

    runtime = sub.add_parser("runtime", help="the backbone runtime trial")
    runtime_sub = runtime.add_subparsers(dest="runtime_command", required=True)
    probe = runtime_sub.add_parser(
        "probe", help="run the runtime trial again, print its table, remember the choice"
    )
    probe.add_argument("--json", action="store_true", help="one JSON object")

    roi = sub.add_parser("roi", help="move one trained ROI between PCs")
    rsub = roi.add_subparsers(dest="roi_command", required=True)
    export = rsub.add_parser("export", help="memory, calibration (and dataset) to a file")
    export.add_argument("--role", required=True, help="role_id")
    export.add_argument("--roi", required=True, help="roi_id")
    export.add_argument("--recipe", default=None, help="recipe_id (default: default)")
    export.add_argument("--model-key", default=None, help="model_key (default: roi_id)")
    export.add_argument("--with-dataset", action="store_true", help="include the samples")
    export.add_argument("file", type=Path, help="FILE.tar.gz")
    roi_import = rsub.add_parser("import", help="install an exported ROI")
    roi_import.add_argument("file", type=Path, help="FILE.tar.gz")
    roi_import.add_argument(
        "--force", action="store_true", help="even if built with other weights/input size"
    )


def run_ops(args: argparse.Namespace, settings: Settings) -> int:
    handlers: dict[str, Callable[[argparse.Namespace, Settings], int]] = {
        "weights": _weights,
        "doctor": _doctor,
        "backup": _backup,
        "restore": _restore,
        "roi": _roi,
        "runtime": _runtime,
    }
    try:
        return handlers[args.command](args, settings)
    except OpsError as exc:
        print(f"bdi-agent {args.command}: {exc}", file=sys.stderr)
        return 1


def _weights(args: argparse.Namespace, settings: Settings) -> int:
    from agent.ops.weights import describe_weights, effective_weights, import_weights

    if args.weights_command == "import":
        record = import_weights(args.file, settings.data_root)
        print(
            f"imported {args.file} ({record['layout']} layout) as "
            f"{settings.data_root / 'weights' / record['file']}"
        )
        print(f"  file sha256:    {record['sha256']}")
        print(f"  tensors sha256: {record['tensor_sha256']}")
        choice = effective_weights(settings)
        if choice.source == "setting":
            print(f"note: {choice.detail} wins over this default; unset it to use these weights")
        else:
            print("default: used whenever BDI_BACKBONE_WEIGHTS is not set")
            # The backbone is loaded once, at start: a running agent keeps what it loaded.
            print(
                "restart a running agent to load them (systemctl restart bdi-agent, "
                "docker compose -f deploy/compose.yaml restart agent); until then it keeps "
                "its old weights, or without any its /health stays 503"
            )
        stale = _memories_built_elsewhere(settings, record["tensor_sha256"])
        if stale:
            print(
                f"warning: {len(stale)} memories were built with other weights and must be "
                f"refit or imported again: {', '.join(stale[:5])}"
            )
        return 0
    info = describe_weights(settings, load=True)
    if args.json:
        print(json.dumps(info, indent=2))
    else:
        for key in (
            "label",
            "source",
            "detail",
            "file",
            "file_sha256",
            "tensor_sha256",
            "feature_id",
            "imported_at",
            "imported_from",
            "layout",
            "error",
        ):
            if info.get(key) is not None:
                print(f"{key + ':':<15}{info[key]}")
    return 1 if "error" in info else 0


def _memories_built_elsewhere(settings: Settings, tensor_sha: str) -> list[str]:
    from engine.errors import CorruptArtifact
    from engine.store import ModelStore

    store = ModelStore(settings.models_root)
    out = []
    for key in store.roi_keys():
        try:
            memory = store.load_memory(key)
        except CorruptArtifact:
            continue
        built = memory.info.feature_id if memory else ""
        if built and not built.startswith(tensor_sha[:16]):
            out.append(f"{key.recipe_id}/{key.role_id}/{key.roi_id}")
    return out


def _doctor(args: argparse.Namespace, settings: Settings) -> int:
    from agent.ops.doctor.check import failed, render_json, render_text
    from agent.ops.doctor.run import run_doctor

    checks = run_doctor(settings, timeout_s=args.timeout)
    print(render_json(checks) if args.json else render_text(checks))
    return 1 if failed(checks) else 0


def _backup(args: argparse.Namespace, settings: Settings) -> int:
    from agent.ops.backup import backup

    report = backup(settings, args.file)
    print(
        f"backup written: {report.path} ({report.files} files, "
        f"{report.bytes / 1024**2:.1f} MiB, {report.memories} memories)"
    )
    for line in report.skipped:
        print(f"left out: {line}", file=sys.stderr)
    return 1 if report.skipped else 0


def _restore(args: argparse.Namespace, settings: Settings) -> int:
    from agent.ops.restore import restore

    report = restore(settings, args.file, force=args.force)
    print(f"restored {', '.join(report.sections)} ({report.files} files) into {settings.data_root}")
    if report.rois:
        print(f"  ROIs: {', '.join(report.rois)}")
    if report.moved_aside:
        print(f"  what was there before is in {report.moved_aside}")
    if report.ignored:
        print(f"  ignored (not part of a backup): {', '.join(report.ignored[:5])}")
    for warning in report.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    print("next: start the agent and run `bdi-agent doctor`")
    return 0


def _roi(args: argparse.Namespace, settings: Settings) -> int:
    from agent.ops.roi_transfer import export_roi, import_roi
    from engine.datasets import DatasetStore
    from engine.errors import BadInput
    from engine.keys import RoiKey
    from engine.store import ModelStore

    models = ModelStore(settings.models_root)
    datasets = DatasetStore(settings.data_root / "datasets")
    if args.roi_command == "export":
        try:
            key = RoiKey.of(args.role, args.roi, args.recipe, args.model_key)
        except BadInput as exc:
            raise OpsError(str(exc)) from None
        manifest = export_roi(models, datasets, key, args.file, args.with_dataset)
        parts = [f"memory {manifest['model_version']}"]
        parts.append("calibrated" if manifest["calibrated"] else "not calibrated")
        if manifest["dataset"]:
            parts.append("dataset ok={ok} ng={ng}".format(**manifest["dataset"]))
        where = f"{key.recipe_id}/{key.role_id}/{key.roi_id}"
        print(f"exported {where} ({', '.join(parts)}) to {args.file}")
        return 0
    feature_id, why = _current_feature_id(settings)
    result = import_roi(args.file, models, datasets, feature_id, args.force, why)
    body = result.to_dict()
    print(
        f"imported {body['recipe_id']}/{body['role_id']}/{body['roi_id']} (memory "
        f"{body['model_version']}{', calibrated' if body['calibrated'] else ', not calibrated'}"
        f"{', replaced ' + body['replaced'] if body['replaced'] else ''})"
    )
    for warning in result.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    return 0


def _runtime(args: argparse.Namespace, settings: Settings) -> int:
    from agent.ops.runtime import probe, table
    from engine.errors import ModelUnavailable

    try:
        choice = probe(settings)
    except ModelUnavailable as exc:
        raise OpsError(str(exc)) from None
    print(json.dumps(choice.to_json()) if args.json else table(choice))
    return 0


def _current_feature_id(settings: Settings) -> tuple[str | None, str]:
    """The feature id this agent's backbone gives, or (None, why it did not load)."""
    from agent.ops.weights import cpu_extractor, effective_weights
    from engine.errors import ModelUnavailable

    extractor = cpu_extractor(settings, effective_weights(settings).spec)
    try:
        extractor.load()
    except ModelUnavailable as exc:
        return None, str(exc)
    return extractor.feature_id, ""
