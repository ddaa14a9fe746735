"""The webhook ingress: `workflow-canceller ingress` (and `sign`).

CRMs that speak HTTP rather than AMQP POST CloudEvents to `/v1/events`, signed the Standard
Webhooks way. A request is answered 202 only once the broker has confirmed the event on the input
exchange, published exactly as an AMQP producer would (structured JSON, persistent, `mandatory`,
routing key = event type), so the worker reads it unchanged. Everything else gets a status the
sender can act on: 400/401/413/415 are final, 503 (with `Retry-After`) means "send it again".

    request --415 content type--> --413 size--> --401 signature--> replay? 202 --400 event-->
        --503 broker not connected / unroutable / not confirmed--> 202 accepted

One long-lived connection and channel (publisher confirms), reconnected in the background with
capped, jittered backoff; `/readyz` is 503 while it is down. A `webhook-id` accepted within the
signature tolerance is remembered (per process) and a replay is answered 202 without publishing.
"""

from __future__ import annotations

import argparse
from typing import Any

from prometheus_client import REGISTRY

from ..cli import serve_until_signal
from ..config import IngressSettings, WebhookSettings
from . import signing
from .http import Ingress, build_app, serve
from .link import WEBHOOK_ID_HEADER, BrokerLink, Unavailable
from .metrics import IngressMetrics

__all__ = [
    "WEBHOOK_ID_HEADER",
    "BrokerLink",
    "Ingress",
    "IngressMetrics",
    "IngressSettings",
    "Unavailable",
    "build_app",
    "commands",
    "serve",
]


def commands(command: Any) -> dict[str, Any]:
    """The ingress subcommands, built with the dispatcher's `Command` type."""
    return {
        "ingress": command(
            "accept signed CloudEvents webhooks over HTTP and publish them to the input exchange",
            IngressSettings,
            _run_ingress,
            serves=True,
        ),
        "sign": command(
            "print the Standard Webhooks headers (or a curl command) that sign a request body",
            WebhookSettings,
            signing.run_sign,
            signing.sign_arguments,
        ),
    }


def _run_ingress(_args: argparse.Namespace, settings: IngressSettings) -> int:
    """Serve until SIGTERM or SIGINT."""
    return serve_until_signal(
        settings,
        "workflow-canceller-ingress",
        lambda stop, tracing: serve(settings, REGISTRY, stop, tracing),
    )
