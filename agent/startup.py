"""Start-up refusals: a reason to stop before anything connects or is written.

``bdi-agent run`` prints one line (``bdi-agent: <message>``) and exits 2: a taken HTTP
port, a restore running on the data root, an unreadable ROI defaults file. Nothing has
reached the broker by then, so no retained ``offline`` is left behind.
"""

from __future__ import annotations


class StartupRefused(Exception):
    """Why the agent cannot start here, worded for the person who started it."""
