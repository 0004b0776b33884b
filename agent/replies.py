"""The outcome of one command, and its contract body."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from agent.commands import Command
from agent.errors import AgentError


@dataclass(frozen=True)
class Reply:
    command: Command
    body: dict[str, Any] | None = None
    error: AgentError | None = None
    elapsed_ms: float = 0.0
    replayed: bool = False  # a duplicate request answered from the journal

    @property
    def ok(self) -> bool:
        return self.error is None

    def to_dict(self) -> dict[str, Any]:
        """The contract's result (fields + request_id + recipe_id) or error body."""
        ids = {"request_id": self.command.request_id, "recipe_id": self.command.recipe_id}
        if self.error is not None:
            return {"error": self.error.body(), **ids}
        return {**(self.body or {}), **ids}
