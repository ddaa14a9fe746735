"""The webhook ingress: `workflow-canceller ingress` (and `sign`)."""

from __future__ import annotations

from typing import Any


def commands(command: Any) -> dict[str, Any]:
    """The ingress subcommands, built with the dispatcher's `Command` type."""
    return {}
