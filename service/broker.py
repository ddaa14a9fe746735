"""The one place a broker connection is opened, for the worker and every operator command.

An `amqps://` URL gets a TLS context built from the settings: the CA bundle
(`CANCELLER_AMQP_CA_FILE`, else the system's), an optional client certificate and key
(`CANCELLER_AMQP_CERT_FILE`, `CANCELLER_AMQP_KEY_FILE`), certificate and hostname verification
always on, TLS 1.2 or later. TLS options written into the URL's query are overridden by it.
"""

from __future__ import annotations

import socket
from urllib.parse import urlsplit

import aio_pika
import aiormq
from aio_pika.abc import AbstractConnection

from .config import CommonSettings, amqp_ssl_context

# What a lost or refusing broker raises. ChannelInvalidStateError is a RuntimeError in aiormq:
# publishing on a channel the broker just closed.
BROKER_ERRORS = (
    aiormq.exceptions.AMQPError,
    aio_pika.exceptions.AMQPException,
    aiormq.exceptions.ChannelInvalidStateError,
    OSError,  # ConnectionError is one
    TimeoutError,
)


async def connect(settings: CommonSettings, role: str) -> AbstractConnection:
    """Open a plain (not robust) connection; `role` names it in the broker's connection list."""
    url = settings.amqp_url.get_secret_value()
    tls = urlsplit(url).scheme == "amqps"
    return await aio_pika.connect(
        url,
        ssl_context=amqp_ssl_context(settings) if tls else None,
        timeout=settings.publish_timeout_s,
        client_properties={"connection_name": f"workflow-canceller-{role}@{socket.gethostname()}"},
    )
