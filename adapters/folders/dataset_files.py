"""A GUI dataset ROI folder as the adapter reads it (never writes it).

<root>/<role_id>/<roi_id>/{ok,ng}/<image> + <stem>.json (mm_per_px, source, ...)
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from adapters.folders.layout import FileChanged, ignored_name, is_image_name, read_stable, stat_sig
from agent.errors import AgentError, bad_request
from engine.errors import ScaleMismatch
from engine.memory import check_scale

LABELS = ("ok", "ng")


@dataclass(frozen=True)
class Image:
    path: Path
    data: bytes
    mm_per_px: float | None


@dataclass(frozen=True)
class Snapshot:
    ok: list[Image]
    ng: list[Image]
    ok_sig: str
    ng_sig: str


def dataset_scale(
    snap: Snapshot, folder: Path, fallback: float | None, role_id: str, roi_id: str
) -> float:
    """The one scale of a ROI's images (their metadata, else the ROI default); scales that
    differ by more than 1 % are refused (scale_mismatch), naming the file."""
    first: tuple[Image, float] | None = None
    for image in snap.ok + snap.ng:
        scale = image.mm_per_px or fallback
        rel = image.path.relative_to(folder).as_posix()
        if scale is None:
            raise bad_request(
                f"{rel} has no mm_per_px: its {image.path.stem}.json gives none and "
                f"configs/rois.yaml has no default for {role_id}/{roi_id}"
            )
        if first is None:
            first = (image, scale)
            continue
        try:
            check_scale(first[1], scale, "dataset")
        except ScaleMismatch:
            raise AgentError(
                "scale_mismatch",
                f"{rel}: mm_per_px {scale} differs from {first[0].path.name}'s {first[1]} "
                "by more than 1 %; scales never mix in one memory",
            ) from None
    if first is None:
        raise bad_request(f"{folder} holds no images")
    return first[1]


def subdirs(folder: Path) -> list[Path]:
    try:
        return sorted(p for p in folder.iterdir() if p.is_dir() and not ignored_name(p.name))
    except OSError:
        return []


def _images(folder: Path) -> list[Path]:
    try:
        names = sorted(p for p in folder.iterdir() if p.is_file())
    except OSError:
        return []
    return [p for p in names if is_image_name(p.name) and not ignored_name(p.name)]


def _listing(folder: Path) -> list[list[Any]]:
    """Name, size and mtime of every image and of its metadata JSON."""
    out = []
    for image in _images(folder):
        out.append([image.name, stat_sig(image), stat_sig(image.with_suffix(".json"))])
    return out


def listing_sig(folder: Path) -> str:
    text = json.dumps([[n, s and s[:2], m and m[:2]] for n, s, m in _listing(folder)])
    return hashlib.sha1(text.encode()).hexdigest()


def _read_scale(meta: Path) -> float | None:
    try:
        data = json.loads(meta.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    value = data.get("mm_per_px") if isinstance(data, dict) else None
    if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
        return None
    return float(value)


def snapshot(folder: Path) -> Snapshot:
    """Every OK and NG image with its scale; ``FileChanged`` if the folder moved meanwhile."""
    sets: dict[str, list[Image]] = {}
    sigs: dict[str, str] = {}
    for label in LABELS:
        before = listing_sig(folder / label)
        images = []
        for path in _images(folder / label):
            data, _ = read_stable(path)
            images.append(Image(path, data, _read_scale(path.with_suffix(".json"))))
        if listing_sig(folder / label) != before:
            raise FileChanged(folder / label)
        sets[label], sigs[label] = images, before
    return Snapshot(sets["ok"], sets["ng"], sigs["ok"], sigs["ng"])
