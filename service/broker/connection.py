"""Broker connections: the one place one is opened (worker, ingress, operator commands), what a
lost broker raises, and the one reconnect backoff every long-lived session uses.

An `amqps://` URL gets a TLS context built from the settings: the CA bundle
(`CANCELLER_AMQP_CA_FILE`, else the system's), an optional client certificate and key
(`CANCELLER_AMQP_CERT_FILE`, `CANCELLER_AMQP_KEY_FILE`), certificate and hostname verification
always on, TLS 1.2 or later. TLS options written into the URL's query are overridden by it.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any
from urllib.parse import urlsplit

import aio_pika
import aiormq
import structlog
from aio_pika.abc import AbstractConnection

from ..config import CommonSettings, amqp_ssl_context
from ..observe.logs import short

log = structlog.get_logger("workflow_canceller.broker")

# A session that stayed up this long starts the next backoff afresh; a flapping broker does not.
STABLE_SESSION_S = 30.0

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


class BrokerLost(Exception):
    """The connection, a channel or a consumer went away: start a new session."""


SESSION_ERRORS = (BrokerLost, *BROKER_ERRORS)


class Reconnects:
    """Capped, jittered, doubling waits between sessions of one long-lived broker client.

    `up()` marks a session as working; the wait after a session that stayed up for
    `STABLE_SESSION_S` starts again from `initial_s`.
    """

    def __init__(self, initial_s: float, max_s: float, clock: Any = time.monotonic) -> None:
        self._initial_s = initial_s
        self._max_s = max_s
        self._clock = clock
        self._next_s = initial_s
        self._up_at: float | None = None

    def up(self) -> None:
        self._up_at = self._clock()

    def next_wait_s(self) -> float:
        """The wait before the next attempt (before jitter); doubles each time, up to the cap."""
        if self._up_at is not None and self._clock() - self._up_at >= STABLE_SESSION_S:
            self._next_s = self._initial_s
        self._up_at = None
        wait_s = self._next_s
        self._next_s = min(self._next_s * 2, self._max_s)
        return wait_s

    async def losses(
        self,
        stop: asyncio.Event,
        session: Callable[[], Awaitable[None]],
        errors: tuple[type[BaseException], ...],
    ) -> AsyncIterator[tuple[BaseException, float]]:
        """Run `session` again and again until `stop` is set: the one reconnect loop of the worker
        and the ingress. Each session that ended with one of `errors` is yielded with the wait
        before the next attempt (for the caller to count and log), then that wait is slept."""
        while not stop.is_set():
            try:
                await session()
                continue
            except errors as error:
                lost = error
            wait_s = self.next_wait_s()
            yield lost, wait_s
            await self.wait(stop, wait_s)

    async def wait(self, stop: asyncio.Event, wait_s: float) -> None:
        """Sleep `wait_s`, +-20 % jitter, waking early when `stop` is set."""
        await sleep_unless(stop, wait_s * random.uniform(0.8, 1.2))  # noqa: S311  # jitter, not crypto


async def sleep_unless(stop: asyncio.Event, seconds: float) -> None:
    """Sleep up to `seconds`, waking early when `stop` is set."""
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), seconds)


async def first(*waitables: asyncio.Event | asyncio.Future[Any]) -> asyncio.Event | asyncio.Future[Any]:
    """Wait until one of the events is set (or the future done); return which."""
    tasks: dict[asyncio.Future[Any], asyncio.Event | asyncio.Future[Any]] = {}
    for waitable in waitables:
        future = asyncio.ensure_future(waitable.wait()) if isinstance(waitable, asyncio.Event) else waitable
        tasks[future] = waitable
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for future, waitable in tasks.items():
            if future is not waitable:
                future.cancel()
    return tasks[next(iter(done))]


async def close_quietly(connection: AbstractConnection) -> None:
    """Close within 5 s; a connection the broker already closed is not an error."""
    try:
        await asyncio.wait_for(connection.close(), 5)
    except (*BROKER_ERRORS, RuntimeError) as error:  # closing twice is harmless
        log.debug("broker.close_failed", error=short(error))
