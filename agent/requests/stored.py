"""Commands over what is stored for a ROI: its manifest and its OK/NG samples."""

from __future__ import annotations

from agent.commands import DatasetClear, DatasetDelete, DatasetList, Manifest
from agent.requests.base import RoiRequest
from agent.requests.rules import FileName, Label


class ManifestRequest(RoiRequest):
    command = Manifest


class DatasetListRequest(RoiRequest):
    command = DatasetList
    label: Label | None = None  # None: both labels


class DatasetDeleteRequest(RoiRequest):
    command = DatasetDelete
    label: Label
    file: FileName


class DatasetClearRequest(RoiRequest):
    command = DatasetClear
    label: Label
