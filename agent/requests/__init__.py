"""One declarative request model per command (contract section 2): the fields each
command takes and the rule of each, shared by every adapter through
``agent.parsing.parse_command``."""

from __future__ import annotations

from agent.commands import COMMANDS
from agent.requests.base import Request
from agent.requests.context import DefaultsLookup, ParseContext
from agent.requests.inspection import MAX_BATCH_ITEMS, InferBatchRequest, InferRequest
from agent.requests.stored import (
    DatasetClearRequest,
    DatasetDeleteRequest,
    DatasetListRequest,
    ManifestRequest,
)
from agent.requests.teach import (
    AddNgRequest,
    CalibrateNgRequest,
    FitImagesRequest,
    FitOkRequest,
    RefitRequest,
)

_MODELS: tuple[type[Request], ...] = (
    Request,  # health: the common fields only
    FitOkRequest,
    AddNgRequest,
    CalibrateNgRequest,
    RefitRequest,
    FitImagesRequest,
    InferRequest,
    InferBatchRequest,
    ManifestRequest,
    DatasetListRequest,
    DatasetDeleteRequest,
    DatasetClearRequest,
)
_BY_COMMAND = {model.command: model for model in _MODELS}

# Command name (aliases included: ``send_ng``) -> its request model.
REQUESTS: dict[str, type[Request]] = {name: _BY_COMMAND[cls] for name, cls in COMMANDS.items()}

__all__ = ["MAX_BATCH_ITEMS", "REQUESTS", "DefaultsLookup", "ParseContext", "Request"]
