"""The ingress's one broker connection: confirmed, mandatory publishes; reconnects in the background."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime
from functools import partial

import aio_pika
import structlog
from aio_pika.abc import AbstractExchange

from ..broker.connection import BROKER_ERRORS, Reconnects, close_quietly, connect, first
from ..broker.publisher import refusals
from ..config import IngressSettings
from ..core.events import InboundEvent
from ..core.ports import PublishRefused
from ..observe.logs import short
from ..observe.tracing import Tracing
from .cloudevents import STRUCTURED
from .metrics import IngressMetrics

log = structlog.get_logger("workflow_canceller.ingress")

WEBHOOK_ID_HEADER = "canceller-webhook-id"


class Unavailable(Exception):
    """The event was not confirmed by the broker; the sender should retry. `reason` is bounded."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


class BrokerLink:
    """One connection and one confirming channel to the input exchange, kept up in the background."""

    def __init__(
        self, settings: IngressSettings, metrics: IngressMetrics, tracing: Tracing | None = None
    ) -> None:
        self._settings = settings
        self._tracing = tracing or Tracing()
        self._metrics = metrics
        self._exchange: AbstractExchange | None = None
        self._lost = asyncio.Event()
        metrics.ready.set(0)

    @property
    def ready(self) -> bool:
        return self._exchange is not None

    async def run(self, stop: asyncio.Event) -> None:
        """Stay connected until `stop` is set, reconnecting with capped, jittered backoff."""
        reconnects = Reconnects(self._settings.reconnect_initial_s, self._settings.reconnect_max_s)
        session = partial(self._session, stop, reconnects)
        # aio-pika raises a plain RuntimeError for a channel asked of a connection the broker just
        # closed: a lost broker too. Anything else here would leave the ingress not ready for good
        # with a green liveness probe, so it is also retried, loudly.
        async for error, wait_s in reconnects.losses(stop, session, (*BROKER_ERRORS, RuntimeError)):
            self._metrics.broker_reconnects.inc()
            log.warning("broker.unavailable", error=short(error), retry_in_s=round(wait_s, 2))

    async def _session(self, stop: asyncio.Event, reconnects: Reconnects) -> None:
        connection = await connect(self._settings, "ingress")
        self._lost = lost = asyncio.Event()
        try:
            connection.close_callbacks.add(lambda *_: lost.set())
            channel = await connection.channel(publisher_confirms=True, on_return_raises=True)
            channel.close_callbacks.add(lambda *_: lost.set())
            exchange = await channel.declare_exchange(
                self._settings.input_exchange, aio_pika.ExchangeType.TOPIC, durable=True
            )
            self._up(exchange)
            reconnects.up()
            await first(stop, lost)
            if not stop.is_set():
                raise ConnectionError("connection or channel closed")
        finally:
            self._down()
            await close_quietly(connection)

    def _up(self, exchange: AbstractExchange) -> None:
        self._exchange = exchange
        self._metrics.ready.set(1)
        log.info("broker.connected", exchange=exchange.name)

    def _down(self) -> None:
        self._exchange = None
        self._metrics.ready.set(0)

    async def publish(self, body: bytes, event: InboundEvent, webhook_id: str) -> None:
        """Publish one event and wait for the broker's confirm; `Unavailable` if it is not confirmed."""
        exchange = self._exchange
        if exchange is None:
            raise Unavailable("not_connected", "not connected to the broker")
        headers: dict[str, str] = {WEBHOOK_ID_HEADER: webhook_id}
        # The publish span's context (when on), else the caller's as it came in.
        with self._tracing.producing(exchange.name, event.type, event.id, headers):
            await self._publish(exchange, body, event, headers)

    async def _publish(
        self, exchange: AbstractExchange, body: bytes, event: InboundEvent, headers: dict[str, str]
    ) -> None:
        message = aio_pika.Message(
            body,
            content_type=STRUCTURED,
            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
            message_id=event.id,
            type=event.type,
            timestamp=datetime.now(UTC),
            headers=dict(headers),
        )
        started = time.monotonic()
        result = "interrupted"  # until the broker answers (e.g. the process is stopping)
        try:
            with refusals(exchange.name, event.type):
                await exchange.publish(
                    message, event.type, mandatory=True, timeout=self._settings.publish_timeout_s
                )
            result = "confirmed"
        except (PublishRefused, *BROKER_ERRORS) as error:
            failure = self._failure(error)
            result = failure.reason
            raise failure from error
        finally:
            self._metrics.publish_duration.labels(result).observe(time.monotonic() - started)
        self._metrics.published.labels(event.type).inc()

    def _failure(self, error: BaseException) -> Unavailable:
        """What a failed publish means for the sender; a broken channel also ends the session."""
        if isinstance(error, PublishRefused) and error.reason == "unroutable":
            return Unavailable("unroutable", "no queue is bound for this event type (is the worker up?)")
        if isinstance(error, PublishRefused):
            return Unavailable("refused", "the broker refused the event")
        if isinstance(error, TimeoutError):
            return Unavailable("unconfirmed", "the broker did not confirm the event in time")
        self._lost.set()
        return Unavailable("broker_error", "the broker connection failed while publishing")
