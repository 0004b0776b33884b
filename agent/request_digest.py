"""The digest of a request: its command and every input, not its request id.

A repeat of a request (a QoS 1 redelivery, a retry, a folder file handled again after a
crash) carries the same ``request_id`` *and* the same inputs. A reused ``request_id`` with
other inputs (another ROI, other images) is another request, and must never be answered
with the first one's result.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from typing import Any

from agent.commands import Command

# Not inputs: who sent the request and how long it waits change nothing it does, and a
# dataset folder's file names (``FitImages.names``) only word its error messages: the
# same images under new names are the same request.
NOT_INPUTS = frozenset({"request_id", "source", "deadline", "names"})


def request_digest(cmd: Command) -> str:
    """sha256 (hex) of the command's name and inputs; images count by their own sha256."""
    canonical = json.dumps(_inputs(cmd, top=True), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def _inputs(cmd: Command, top: bool) -> dict[str, Any]:
    # A batch item's own request id is an input of the batch: its result carries it.
    skip = NOT_INPUTS if top else NOT_INPUTS - {"request_id"}
    values = {
        field.name: _canonical(getattr(cmd, field.name))
        for field in dataclasses.fields(cmd)
        if field.name not in skip
    }
    return {"command": cmd.name, **values}


def _canonical(value: Any) -> Any:
    if isinstance(value, bytes | bytearray | memoryview):
        return {"sha256": hashlib.sha256(value).hexdigest()}
    if isinstance(value, Command):
        return _inputs(value, top=False)
    if isinstance(value, tuple | list):
        return [_canonical(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _canonical(v) for k, v in value.items()}
    if isinstance(value, int | float) and not isinstance(value, bool):
        # 10 and 10.0 (a shape's JSON) are one number; repr is exact for floats.
        try:
            return repr(float(value))
        except OverflowError:
            return repr(value)
    return value
