"""The one place a broker connection is opened, for the worker and every operator command."""

from __future__ import annotations

import socket

import aio_pika
from aio_pika.abc import AbstractConnection

from .config import CommonSettings


async def connect(settings: CommonSettings, role: str) -> AbstractConnection:
    """Open a plain (not robust) connection; `role` names it in the broker's connection list."""
    return await aio_pika.connect(
        settings.amqp_url.get_secret_value(),
        timeout=settings.publish_timeout_s,
        client_properties={"connection_name": f"workflow-canceller-{role}@{socket.gethostname()}"},
    )
