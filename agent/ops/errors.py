"""The one error the operations commands raise: a refusal worded for the operator."""

from __future__ import annotations


class OpsError(Exception):
    """Refused or failed; the message says why and what to do (the CLI prints it)."""
