"""The outcome of one command, and its contract body."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import Any

from agent.commands import Command
from agent.errors import AgentError
from agent.results import Result


@dataclass(frozen=True)
class Reply:
    command: Command
    result: Result | None = None
    error: AgentError | None = None
    elapsed_ms: float = 0.0
    replayed: bool = False  # a duplicate request answered from the journal

    @property
    def ok(self) -> bool:
        return self.error is None

    @cached_property
    def body(self) -> dict[str, Any] | None:
        """The result's plain JSON form (heatmaps base64), or None for an error without
        one. Adapters with their own picture encoding use ``result`` instead."""
        return self.result.body() if self.result is not None else None

    def to_dict(self) -> dict[str, Any]:
        """The contract's result (fields + request_id + recipe_id) or error body."""
        ids = {"request_id": self.command.request_id, "recipe_id": self.command.recipe_id}
        if self.error is not None:
            return {"error": self.error.body(), **ids}
        return {**(self.body or {}), **ids}
