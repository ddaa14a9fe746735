"""The ingress settings: the common ones, the webhook secrets and its HTTP side."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import NoDecode

from .. import webhooks


class IngressSettings(webhooks.WebhookSettings):
    """Everything `ingress` reads: the common settings, the secrets (required) and its HTTP side."""

    # Several at once while a secret is rotated: a request signed with any of them is accepted.
    webhook_secrets: Annotated[tuple[SecretStr, ...], NoDecode]
    ingress_port: int = Field(default=8081, ge=1, le=65_535)
    ingress_host: str = "0.0.0.0"  # noqa: S104  # CRMs, the probes and Prometheus reach the pod from outside
    # Told to senders with every 503.
    ingress_retry_after_s: int = Field(default=5, ge=1, le=3_600)
    # webhook-ids remembered for replay detection (per process, for twice the signature tolerance).
    webhook_replay_cache_size: int = Field(default=100_000, ge=0, le=10_000_000)

    @field_validator("webhook_secrets")
    @classmethod
    def _need_one(cls, value: tuple[SecretStr, ...]) -> tuple[SecretStr, ...]:
        """An ingress without a secret could verify nothing."""
        if not value:
            raise ValueError("at least one whsec_ secret is required")
        return value
