"""The ``Inspect(RoleId, RoiId, ImagePath)`` method on ``Objects/BDI`` (contract section 10).

It runs the ``infer`` command MQTT's ``image_path`` runs: the same path checks (the image
roots), the same worker, the same verdict event; the recipe is ``default``. The scale
(``mm_per_px``) is the ROI memory's own: the method has no scale argument, and an infer at
any other scale would be refused as ``scale_mismatch`` anyway. Refusals are OPC UA status
codes, with the contract's message as the inputs' diagnostic (``AdditionalInfo``) and in
the log.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import structlog
from asyncua import ua

from adapters.opcua.nodes import status, type_id
from agent.bootstrap import Agent
from agent.errors import AgentError, bad_request
from agent.parsing import parse_command
from engine.errors import EngineError
from engine.keys import RoiKey

log = structlog.get_logger("adapters.opcua")

STRING = ua.VariantType.String
INPUTS = (
    ("RoleId", STRING, "the ROI's role_id"),
    ("RoiId", STRING, "the ROI's roi_id"),
    ("ImagePath", STRING, "absolute path of the ROI image, under the configured image roots"),
)
OUTPUTS = (
    ("Score", ua.VariantType.Double, "the image's anomaly score"),
    ("IsAnomaly", ua.VariantType.Boolean, "the verdict; null while the ROI is uncalibrated"),
    ("RequestId", ua.VariantType.String, "the request id of the verdict (events, logs)"),
)
# The status code of each error kind of the contract.
STATUS_BY_KIND = {
    "bad_request": ua.StatusCodes.BadInvalidArgument,
    "token_mismatch": ua.StatusCodes.BadInvalidArgument,
    "scale_mismatch": ua.StatusCodes.BadInvalidArgument,
    "payload_too_large": ua.StatusCodes.BadRequestTooLarge,
    "not_fitted": ua.StatusCodes.BadInvalidState,
    "not_calibrated": ua.StatusCodes.BadInvalidState,
    "busy": ua.StatusCodes.BadResourceUnavailable,
    "internal": ua.StatusCodes.BadInternalError,
}


def arguments(specs: Sequence[tuple[str, ua.VariantType, str]]) -> list[ua.Argument]:
    return [
        ua.Argument(
            Name=name,
            DataType=type_id(vtype),
            ValueRank=-1,
            Description=ua.LocalizedText(text),
        )
        for name, vtype, text in specs
    ]


class Inspect:
    def __init__(self, agent: Agent, image_roots: Sequence[Path]) -> None:
        self.agent = agent
        self.image_roots = tuple(image_roots)

    async def call(self, parent: ua.NodeId, *args: ua.Variant) -> Any:
        """asyncua's method callback: the arguments as variants; output variants, or a
        ``CallMethodResult`` carrying the refusal."""
        values = [arg.Value for arg in args]
        try:
            if len(values) != len(INPUTS) or not all(isinstance(v, str) for v in values):
                raise bad_request("Inspect takes three strings: RoleId, RoiId, ImagePath")
            role_id, roi_id, image_path = values
            reply = await self._infer(role_id, roi_id, image_path)
        except AgentError as error:
            return self._refusal(error, len(values))
        if reply.error is not None:
            return self._refusal(reply.error, len(values))
        body = reply.body or {}
        is_anomaly = body.get("is_anomaly")
        return [
            ua.Variant(float(body["score"]), ua.VariantType.Double),
            ua.Variant() if is_anomaly is None else ua.Variant(bool(is_anomaly)),
            ua.Variant(reply.command.request_id, ua.VariantType.String),
        ]

    async def _infer(self, role_id: str, roi_id: str, image_path: str) -> Any:
        # Disk reads (the memory's scale, the image) run off the event loop: a slow share
        # must not stall the server's other clients.
        cmd = await asyncio.to_thread(self._command, role_id, roi_id, image_path)
        return await asyncio.wrap_future(self.agent.bus.submit(cmd))

    def _command(self, role_id: str, roi_id: str, image_path: str) -> Any:
        payload = {
            "role_id": role_id,
            "roi_id": roi_id,
            "image_path": image_path,
            "mm_per_px": self._scale(role_id, roi_id),
        }
        return parse_command(
            "infer",
            payload,
            "opcua",
            self.image_roots,
            max_image_bytes=self.agent.settings.max_image_bytes,
        )

    def _scale(self, role_id: str, roi_id: str) -> float:
        """The ROI memory's ``mm_per_px``: the one scale an infer on it may use. Without a
        memory, the ROI's configured default, else any: the worker answers ``not_fitted``
        after the same checks as MQTT's (a path outside the roots is refused first)."""
        try:
            key = RoiKey.of(role_id, roi_id)
            memory = self.agent.services.cache.get(key)
        except EngineError as exc:
            raise AgentError.from_exception(exc) from None
        if memory is not None and memory.info.mm_per_px:
            return float(memory.info.mm_per_px)
        defaults = self.agent.services.defaults_for(key)
        return defaults.mm_per_px if defaults and defaults.mm_per_px else 1.0

    @staticmethod
    def _refusal(error: AgentError, n_inputs: int) -> ua.CallMethodResult:
        log.warning("opcua inspect refused", kind=error.kind, error=error.message)
        code = status(STATUS_BY_KIND.get(error.kind, ua.StatusCodes.BadInternalError))
        # The message rides on every input's diagnostic: which input it concerns is in it.
        diagnostic = ua.DiagnosticInfo(AdditionalInfo=ua.String(error.message))
        result = ua.CallMethodResult()
        result.StatusCode = code
        result.InputArgumentResults = [code] * n_inputs
        result.InputArgumentDiagnosticInfos = [diagnostic] * n_inputs
        return result
