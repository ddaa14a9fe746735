"""Operator commands: `dlq list|replay|purge`, `publish`, `check` (issue: operate it)."""

from __future__ import annotations

from typing import Any


def commands(command: Any) -> dict[str, Any]:
    """The operator subcommands, built with the dispatcher's `Command` type."""
    return {}
