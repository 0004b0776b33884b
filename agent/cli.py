"""``bdi-agent``: run the agent, or send one command at a terminal.

One-shot commands build the same bus on the same data root as the running agent, so
what an operator does here is exactly what MQTT, folders and HTTP do. The operations
commands (weights, doctor, backup, restore, roi) live in ``agent.ops``.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import structlog

from agent import __version__
from agent.bootstrap import Agent, bootstrap
from agent.commands import AddNg, CalibrateNg, Command, FitOk, Health, Infer, Manifest
from agent.config import LEGACY_NAMES, ConfigError, Settings, load_settings
from agent.config_checks import unknown_env_names
from agent.errors import AgentError
from agent.logging import configure_logging
from agent.ops.cli import OPS_COMMANDS, add_parsers, run_ops
from agent.ops.weights import effective_weights
from agent.parsing import parse_command
from agent.replies import Reply
from agent.root_lock import hold_shared
from agent.startup import StartupRefused
from engine.datasets import IMAGE_SUFFIXES

log = structlog.get_logger("agent")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="bdi-agent", description=__doc__)
    parser.add_argument("--version", action="version", version=__version__)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("run", help="start the agent with the enabled adapters")
    sub.add_parser("health", help="load the model and print the health body")

    def roi_args(p: argparse.ArgumentParser, scale_required: bool = True) -> None:
        p.add_argument("--role", required=True, help="role_id")
        p.add_argument("--roi", required=True, help="roi_id")
        p.add_argument("--recipe", default=None, help="recipe_id (default: default)")
        p.add_argument("--mm-per-px", type=float, required=scale_required, help="scale")

    fit = sub.add_parser("fit", help="store a folder of OK images and (re)build the memory")
    fit.add_argument("dir", type=Path)
    roi_args(fit)
    fit.add_argument("--shape", default=None, help="ROI mask as JSON")
    fit.add_argument("--no-fit", action="store_true", help="only store the samples")

    add_ng = sub.add_parser("add-ng", help="store a folder of NG images")
    add_ng.add_argument("dir", type=Path)
    roi_args(add_ng)

    infer = sub.add_parser("infer", help="score images; one JSON line each")
    infer.add_argument("images", nargs="+", type=Path)
    roi_args(infer)
    infer.add_argument("--shape", default=None, help="ROI mask as JSON")
    infer.add_argument("--no-heatmap", action="store_true", help="leave the heatmap out")

    calibrate = sub.add_parser("calibrate", help="choose and store the threshold")
    roi_args(calibrate, scale_required=False)
    calibrate.add_argument("--ok-scores", default=None, help="comma-separated OK scores")
    calibrate.add_argument("--ng-scores", default=None, help="comma-separated NG scores")
    calibrate.add_argument("--area-mm2-thr", type=float, default=None)
    calibrate.add_argument("--score-percentile", type=float, default=None)

    manifest = sub.add_parser("manifest", help="what is stored for a ROI")
    roi_args(manifest, scale_required=False)
    add_parsers(sub)  # operations: weights, doctor, backup, restore, roi
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        settings = load_settings()
    except ConfigError as exc:
        print(f"bdi-agent: {exc}", file=sys.stderr)
        return 2
    if args.command == "run":
        configure_logging(settings.log_level)
        return run(settings)
    # One-shot results own stdout (one JSON line each); the log goes to stderr.
    configure_logging(settings.log_level, sys.stderr)
    if args.command in OPS_COMMANDS:
        return run_ops(args, settings)
    try:
        commands = one_shot_commands(args)
    except (AgentError, OSError) as exc:
        print(f"bdi-agent: {exc}", file=sys.stderr)
        return 2
    return one_shot(settings, commands, needs_model=args.command not in ("manifest", "add-ng"))


def run(settings: Settings) -> int:
    """Start, wait for SIGTERM/SIGINT, then stop cleanly: finish the command in flight.

    Everything that can refuse the start (the data root's lock, the ROI defaults file, the
    HTTP port) is done before any adapter starts: one line on stderr, exit status 2.
    """
    from agent.adapters_wiring import build_adapters

    try:
        root_lock = hold_shared(settings.data_root)
        agent = bootstrap(settings)
        agent.adapters.extend(build_adapters(settings, agent))
    except (StartupRefused, ConfigError) as exc:
        print(f"bdi-agent: {exc}", file=sys.stderr)
        return 2
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    log_start(agent)
    agent.start()
    stop.wait()
    log.info("stopping", queue_size=agent.worker.queue_size)
    agent.stop()
    log.info("stopped")
    root_lock.release()
    return 0


def log_start(agent: Agent) -> None:
    settings = agent.settings
    weights = effective_weights(settings)
    log.info(
        "starting",
        version=__version__,
        agent_id=settings.agent_id,
        data_root=str(settings.data_root),
        # What the backbone is given (an imported default shows as its file path).
        weights=weights.spec,
        weights_source=weights.source,
        device=settings.device,
        adapters=[type(a).__name__ for a in agent.adapters],
        legacy_names_used=settings.legacy_names_used,
    )
    unknown = unknown_env_names(dict(os.environ), set(Settings.model_fields), set(LEGACY_NAMES))
    if unknown:
        log.warning("unknown BDI_* variables ignored (typos?)", names=unknown)


def _images_in(folder: Path) -> list[bytes]:
    if not folder.is_dir():
        raise OSError(f"{folder} is not a folder")
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise OSError(f"{folder} holds no PNG/JPEG/BMP/TIFF images")
    return [p.read_bytes() for p in files]


def _scores(text: str | None) -> list[float] | None:
    return None if text is None else [float(v) for v in text.split(",") if v.strip()]


def one_shot_commands(args: argparse.Namespace) -> list[tuple[Command, dict[str, Any]]]:
    """The command(s) an invocation stands for, each with fields to add to its output."""
    base: dict[str, Any] = {"request_id": str(uuid.uuid4())}
    if hasattr(args, "role"):
        base.update(role_id=args.role, roi_id=args.roi, recipe_id=args.recipe)
    if getattr(args, "mm_per_px", None) is not None:
        base["mm_per_px"] = args.mm_per_px
    name = args.command
    if name == "health":
        return [(parse_command(Health.name, base, "cli"), {})]
    if name == "fit":
        payload = {**base, "images": _images_in(args.dir), "shape": args.shape}
        payload["memory_fit"] = not args.no_fit
        return [(parse_command(FitOk.name, payload, "cli"), {})]
    if name == "add-ng":
        payload = {**base, "images": _images_in(args.dir)}
        return [(parse_command(AddNg.name, payload, "cli"), {})]
    if name == "calibrate":
        payload = {
            **base,
            "ok_scores": _scores(args.ok_scores),
            "ng_scores": _scores(args.ng_scores),
            "area_mm2_thr": args.area_mm2_thr,
            "score_percentile": args.score_percentile,
        }
        return [(parse_command(CalibrateNg.name, payload, "cli"), {})]
    if name == "manifest":
        return [(parse_command(Manifest.name, base, "cli"), {})]
    out = []
    for path in args.images:
        payload = {
            **base,
            "request_id": str(uuid.uuid4()),
            "image": path.read_bytes(),
            "shape": args.shape,
            "heatmap": not args.no_heatmap,
        }
        out.append((parse_command(Infer.name, payload, "cli"), {"image": str(path)}))
    return out


def one_shot(
    settings: Settings, commands: list[tuple[Command, dict[str, Any]]], needs_model: bool
) -> int:
    try:
        # Held like a running agent's: a restore must not move the data root meanwhile.
        root_lock = hold_shared(settings.data_root)
        agent = bootstrap(settings)
    except (StartupRefused, ConfigError) as exc:
        print(f"bdi-agent: {exc}", file=sys.stderr)
        return 2
    agent.services.core.progress = _print_progress
    # SIGTERM/SIGINT: take nothing new, let the command in flight finish, exit normally.
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: agent.worker.refuse_new())
    agent.start(load_model=False)
    if needs_model:
        agent.load_model()
    try:
        futures = [(agent.bus.submit(cmd), extra) for cmd, extra in commands]
        replies: list[tuple[Reply, dict[str, Any]]] = [(f.result(), x) for f, x in futures]
    finally:
        agent.stop()
        root_lock.release()
    failed = False
    for reply, extra in replies:
        print(json.dumps({**extra, **reply.to_dict()}), flush=True)
        failed |= not reply.ok
    return 1 if failed else 0


def _print_progress(stage: str, done: int, total: int) -> None:
    if total:
        print(f"{stage}: {done}/{total}", file=sys.stderr, flush=True)
