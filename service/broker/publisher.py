"""Outbound messages: persistent, `mandatory`, and confirmed by the broker before we go on.

Four kinds leave the service: `workflow-cancelled` events (the core's `Announcer`), copies of an
input message parked in a delay queue for a later attempt, continuation copies sent straight back
to the input queue, and copies sent to the dead-letter queue. Each `await` returns only once the
broker has confirmed the message, so the input message can be acked after it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Collection, Iterator
from datetime import UTC, datetime
from typing import Any

import aio_pika
import aiormq
import structlog
from aio_pika.abc import AbstractChannel, AbstractExchange, AbstractIncomingMessage
from prometheus_client import Counter

from ..core.events import WORKFLOW_CANCELLED, InboundEvent, trigger_of, workflow_cancelled
from ..core.ports import CancelResult, PublishRefused
from ..observe.tracing import TRACESTATE, Tracing, started

log = structlog.get_logger("workflow_canceller.publisher")

HeaderValue = str | int
CLOUDEVENTS_JSON = "application/cloudevents+json"


class Publisher:
    """Publishes on one channel opened with publisher confirms and `on_return_raises`."""

    def __init__(
        self,
        channel: AbstractChannel,
        output: AbstractExchange,
        dead_letter: AbstractExchange,
        *,
        output_routing_key: str,
        timeout_s: float,
        requeue: AbstractExchange | None = None,
        source: str = "urn:workflow-canceller",
        published: Counter | None = None,
        tracing: Tracing | None = None,
    ) -> None:
        self._tracing = tracing or Tracing()
        self._channel = channel
        self._output = output
        self._dead_letter = dead_letter
        self._requeue = requeue
        self._output_routing_key = output_routing_key
        self._timeout_s = timeout_s
        self._source = source
        self._published = published

    async def workflow_cancelled(self, trigger: InboundEvent, result: CancelResult) -> None:
        """Announce one settled workflow (the core's `Announcer`): a `workflow-cancelled` event,
        confirmed by the broker; `PublishRefused` if the broker cannot take it."""
        if result.outcome == "not_found":  # the core never announces these; nothing to publish
            return
        confirmed_at = datetime.now(UTC)
        start = started()  # the trace of the event that started it, carried as its own attributes
        event_id, body = workflow_cancelled(
            workflow_id=result.workflow_id,
            outcome=result.outcome,
            status=result.status,
            trigger=trigger_of(trigger),
            source=self._source,
            confirmed_at=confirmed_at,
            extensions=start.headers() if start is not None else None,
        )
        await self._publish_cancelled(body, event_id, confirmed_at)
        if self._published is not None:
            self._published.inc()
        log.info("workflow.settled", workflow_id=result.workflow_id, outcome=result.outcome)

    async def _publish_cancelled(self, body: bytes, event_id: str, confirmed_at: datetime) -> None:
        """Publish one workflow-cancelled event; `PublishRefused` if the broker cannot take it.

        The hot path: the frame properties go straight to the AMQP channel, skipping aio-pika's
        `Message` object (its per-attribute checks cost more than the publish itself here).
        """
        properties = aiormq.spec.Basic.Properties(
            content_type=CLOUDEVENTS_JSON,
            delivery_mode=2,  # persistent
            message_id=event_id,
            message_type=WORKFLOW_CANCELLED,
            timestamp=confirmed_at,
        )
        channel = await self._channel.get_underlay_channel()
        headers: dict[str, Any] = {}  # the publish span's context (the hop), or what came in
        with (
            self._tracing.producing(self._output.name, self._output_routing_key, event_id, headers),
            refusals(self._output.name, self._output_routing_key),
        ):
            properties.headers = headers or None
            await channel.basic_publish(
                body,
                exchange=self._output.name,
                routing_key=self._output_routing_key,
                properties=properties,
                mandatory=True,
                timeout=self._timeout_s,
            )

    async def to_delay_queue(
        self,
        original: AbstractIncomingMessage,
        queue: str,
        headers: dict[str, HeaderValue],
        drop: tuple[str, ...] = (),
    ) -> None:
        """Park a copy of `original` in a delay queue (through the default exchange)."""
        await self._confirmed(self._channel.default_exchange, self._copy(original, headers, drop), queue)

    async def to_input(
        self, original: AbstractIncomingMessage, headers: dict[str, HeaderValue], drop: tuple[str, ...] = ()
    ) -> None:
        """A continuation copy of `original`, straight back to the input queue its headers name
        (through the requeue exchange, so the state it carries is trusted)."""
        if self._requeue is None:
            raise PublishRefused("unroutable", "no requeue exchange on this publisher")
        await self._confirmed(self._requeue, self._copy(original, headers, drop), "")

    async def to_dead_letter(
        self, original: AbstractIncomingMessage, headers: dict[str, HeaderValue], drop: tuple[str, ...] = ()
    ) -> None:
        """Send a copy of `original`, body untouched, to the dead-letter exchange, without `drop`."""
        copy = self._copy(original, headers, drop)
        await self._confirmed(self._dead_letter, copy, original.routing_key or "")

    @staticmethod
    def _copy(
        original: AbstractIncomingMessage, headers: dict[str, HeaderValue], drop: tuple[str, ...]
    ) -> aio_pika.Message:
        """`copy_message`, carrying the starting trace context of the delivery in its headers."""
        start = started()
        if start is not None:
            headers = {**headers, **start.headers()}
            if start.tracestate is None:
                drop = (*drop, TRACESTATE)
        return copy_message(original, headers, drop)

    async def _confirmed(self, exchange: AbstractExchange, message: aio_pika.Message, key: str) -> None:
        # The copy's own publish span, when on; its headers keep the starting context (`_copy`).
        with (
            self._tracing.producing(exchange.name, key, message.message_id, {}),
            refusals(exchange.name, key),
        ):
            await exchange.publish(message, key, mandatory=True, timeout=self._timeout_s)


@contextlib.contextmanager
def refusals(exchange: str, key: str) -> Iterator[None]:
    """A returned (unroutable) or nacked publish becomes `PublishRefused`: the one mapping, for the
    worker, the ingress and the `publish` command."""
    try:
        yield
    except aiormq.exceptions.PublishError as error:
        detail = f"unroutable: no queue bound to {exchange!r} with key {key!r}"
        raise PublishRefused("unroutable", detail) from error
    except aiormq.exceptions.DeliveryError as error:
        detail = f"broker refused the message ({type(error.frame).__name__})"
        raise PublishRefused("refused", detail) from error


def _rewritable(value: Any) -> Any:
    """A header value as it can be written again. A long string that is not UTF-8 is read back as
    `bytes`, which the AMQP encoder refuses; it goes out as a byte array, inside tables too."""
    if isinstance(value, bytes):
        return bytearray(value)
    if isinstance(value, dict):
        return {k: _rewritable(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_rewritable(v) for v in value]
    return value


def copy_message(
    original: AbstractIncomingMessage, headers: dict[str, HeaderValue], drop: Collection[str] = ()
) -> aio_pika.Message:
    """The same body and properties, persistent, with `headers` merged over the original ones
    (and without those in `drop`)."""
    merged = {k: _rewritable(v) for k, v in (original.headers or {}).items() if k not in drop}
    merged.update(headers)
    return aio_pika.Message(
        original.body,
        headers=merged,
        content_type=original.content_type,
        content_encoding=original.content_encoding,
        delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
        priority=original.priority,
        correlation_id=original.correlation_id,
        message_id=original.message_id,
        timestamp=original.timestamp,
        type=original.type,
        app_id=original.app_id,
    )
