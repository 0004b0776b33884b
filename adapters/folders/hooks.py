"""What the folder adapter's parts are handed by the adapter that owns the threads."""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Future

from agent.commands import Command
from agent.replies import Reply

# Hand a callback to the adapter's scheduler thread, which calls it with the time now.
Post = Callable[[Callable[[float], None]], None]
# Run a blocking file operation on the adapter's I/O thread.
RunIo = Callable[[Callable[[], None]], None]
# Hand a command to the agent's bus.
Submit = Callable[[Command], "Future[Reply]"]
