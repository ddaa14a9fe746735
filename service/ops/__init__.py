"""Operator commands: `dlq` (list, replay, purge), `publish`, `check`."""
