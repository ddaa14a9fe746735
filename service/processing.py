"""One message, start to finish: parse, run the core, settle, observe.

`Processor.settle` is the one place that turns an `Outcome` into ack, retry, dead-letter or
requeue. Anything the broker does wrong while a message is handled is reported back to the
supervisor (`broker_trouble`), which starts a new session; the broker then redelivers the message.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from datetime import UTC, datetime
from functools import partial

import structlog
from aio_pika.abc import AbstractIncomingMessage

from . import topology
from .broker import BROKER_ERRORS as BROKER_ERRORS
from .capacity import Capacity
from .config import Settings
from .dialnexa import CancelResult
from .events import (
    COMPLAINT_RECEIVED,
    WORKFLOW_CANCELLED,
    InboundEvent,
    InvalidEvent,
    parse,
    peek_type,
    trigger_of,
    workflow_cancelled,
)
from .handler import (
    Completed,
    CredentialsRejected,
    DeadLetter,
    Outcome,
    PublishRefused,
    RetryLater,
    RetryPolicy,
    handle,
)
from .logs import encodable
from .metrics import Children, Metrics
from .publisher import HeaderValue, Publisher
from .retries import (
    HEADER_ATTEMPTS,
    HEADER_DEAD_LETTERED,
    HEADER_DONE,
    HEADER_ERROR,
    HEADER_FIRST_SEEN,
    HEADER_QUEUE,
    HEADER_REASON,
    HEADER_SOURCE_QUEUE,
    Delivery,
    decode_done,
    encode_done,
)
from .supervision import short

log = structlog.get_logger("workflow_canceller.processing")


class BrokerLost(Exception):
    """The connection, a channel or a consumer went away: start a new session."""


SESSION_ERRORS = (BrokerLost, *BROKER_ERRORS)


class Processor:
    """Handles each delivered message; shared by every session of the worker."""

    def __init__(
        self,
        settings: Settings,
        capacity: Capacity,
        metrics: Metrics,
        broker_trouble: Callable[[], None],
    ) -> None:
        self._settings = settings
        self._capacity = capacity
        self._metrics = metrics
        self._broker_trouble = broker_trouble
        self._policy = RetryPolicy(
            broker_delays_s=settings.retry_delays,
            call_attempts=settings.call_attempts,
            call_budget_s=settings.call_retry_budget_s,
            backoff_initial_s=settings.call_backoff_initial_s,
            backoff_max_s=settings.call_backoff_max_s,
            max_retry_after_wait_s=settings.max_retry_after_wait_s,
        )
        self.credentials_rejected = asyncio.Event()
        self._received = Children(metrics.events_received)
        self._processed = Children(metrics.events_processed)
        self._durations = Children(metrics.event_processing_duration)
        self._ages = Children(metrics.event_age)
        self._cancellations = Children(metrics.workflow_cancellations)
        self._published = metrics.events_published.labels(WORKFLOW_CANCELLED)

    async def process(self, message: AbstractIncomingMessage, publisher: Publisher, queue: str) -> None:
        started = time.perf_counter()
        delivery = Delivery.of(message, int(time.time() * 1000), self._settings.requeue_exchange)
        try:
            event, outcome = await self._outcome_of(message, publisher, delivery)
            result = await self.settle(message, outcome, publisher, queue, delivery)
        except asyncio.CancelledError:
            log.info("event.abandoned", reason="shutdown_or_broker_loss")
            raise
        except SESSION_ERRORS as error:
            log.warning("event.unsettled", error=short(error), note="reconnecting; the broker redelivers it")
            self._broker_trouble()
            return
        self._observe(message, event, outcome, result, delivery, started)

    async def _outcome_of(
        self, message: AbstractIncomingMessage, publisher: Publisher, delivery: Delivery
    ) -> tuple[InboundEvent | None, Outcome]:
        try:
            event = parse(message.body, message.content_type, self._settings.max_body_bytes)
        except InvalidEvent as error:
            structlog.contextvars.bind_contextvars(message_id=message.message_id, attempt=delivery.attempt)
            self._received(peek_type(message.body)).inc()
            return None, DeadLetter("invalid", str(error))
        structlog.contextvars.bind_contextvars(
            message_id=message.message_id, attempt=delivery.attempt, event_id=event.id, event_type=event.type
        )
        self._received(event.type).inc()
        done = decode_done(delivery.done_header, len(event.data.workflow_ids))
        try:
            outcome = await handle(
                event,
                self._capacity.lane("complaint" if event.type == COMPLAINT_RECEIVED else "campaign"),
                partial(self._emit, publisher, trigger_of(event)),
                policy=self._policy,
                attempt=delivery.attempt,
                done=done,
                parallel=self._settings.concurrency,
            )
        except Exception as error:  # a bug must not crash the worker: retry, then DLQ
            leaves = _leaves(error)
            if any(isinstance(leaf, BROKER_ERRORS) for leaf in leaves):
                raise BrokerLost("publishing failed") from error
            log.error("event.internal_error", error=short(leaves[0]), exc_info=leaves[0])
            text = f"internal error: {type(leaves[0]).__name__}"
            delay = self._policy.broker_delay(delivery.attempt, None)
            if delay is None:
                return event, DeadLetter("exhausted", text)
            return event, RetryLater(delay, done, text, total=len(event.data.workflow_ids))
        return event, outcome

    def _observe(
        self,
        message: AbstractIncomingMessage,
        event: InboundEvent | None,
        outcome: Outcome,
        result: str,
        delivery: Delivery,
        started: float,
    ) -> None:
        """Metrics and the one summary log line of a settled message."""
        event_type = event.type if event else peek_type(message.body)
        duration_s = time.perf_counter() - started
        self._processed(event_type, result).inc()
        self._durations(event_type).observe(duration_s)
        counts: dict[str, int] = {}
        for each in outcome.results:
            counts[each.outcome] = counts.get(each.outcome, 0) + 1
        failed = outcome.failed if isinstance(outcome, DeadLetter) else 0
        if failed:
            counts["failed"] = failed
        for name, count in counts.items():
            self._cancellations(event_type, name).inc(count)
        if event is not None and isinstance(outcome, Completed):
            born_s = event.time.timestamp() if event.time else delivery.first_seen_ms / 1000
            self._ages(event_type).observe(max(0.0, time.time() - born_s))
        log.info(
            "event.settled",
            event_type=event_type,
            result=result,
            reason=getattr(outcome, "reason", None),
            error=getattr(outcome, "error", None),
            workflows=len(event.data.workflow_ids) if event else 0,
            duration_ms=round(duration_s * 1000, 1),
            **counts,
        )
        structlog.contextvars.clear_contextvars()

    async def _emit(self, publisher: Publisher, trigger: dict[str, str], result: CancelResult) -> None:
        if result.outcome == "not_found":  # the core never emits these; nothing to publish
            return
        confirmed_at = datetime.now(UTC)
        event_id, body = workflow_cancelled(
            workflow_id=result.workflow_id,
            outcome=result.outcome,
            status=result.status,
            trigger=trigger,
            source=self._settings.event_source,
            confirmed_at=confirmed_at,
        )
        await publisher.workflow_cancelled(body, event_id, confirmed_at)
        self._published.inc()
        log.debug("workflow.published", workflow_id=result.workflow_id, outcome=result.outcome)

    async def settle(
        self,
        message: AbstractIncomingMessage,
        outcome: Outcome,
        publisher: Publisher,
        queue: str,
        delivery: Delivery,
    ) -> str:
        """The one place an outcome becomes ack / retry / dead-letter / requeue."""
        try:
            match outcome:
                case Completed():
                    await message.ack()
                    return "acked"
                case RetryLater(delay_s=delay_s, done=done, error=error):
                    headers: dict[str, HeaderValue] = {
                        HEADER_QUEUE: queue,
                        HEADER_ATTEMPTS: delivery.attempt,
                        HEADER_FIRST_SEEN: delivery.first_seen_ms,
                        HEADER_ERROR: encodable(error)[:500],
                        HEADER_DONE: encode_done(done, outcome.total),
                    }
                    await publisher.to_delay_queue(
                        message, topology.delay_queue_for(self._settings, delay_s), headers
                    )
                    await message.ack()
                    return "retried"
                case DeadLetter(reason=reason, error=error):
                    await publisher.to_dead_letter(
                        message,
                        {
                            HEADER_REASON: reason,
                            HEADER_ERROR: encodable(error)[:500],
                            HEADER_ATTEMPTS: delivery.attempt,
                            HEADER_SOURCE_QUEUE: queue,
                            HEADER_DEAD_LETTERED: int(time.time() * 1000),
                        },
                        drop=(HEADER_QUEUE,),  # a replay from the DLQ starts afresh
                    )
                    await message.ack()
                    self._metrics.dead_lettered.labels(reason).inc()
                    return "dead_lettered"
                case CredentialsRejected():
                    await message.nack(requeue=True)
                    self.credentials_rejected.set()
                    return "requeued"
        except PublishRefused as error:
            log.error("event.settle_refused", error=str(error))
            await message.nack(requeue=True)
            return "requeued"
        except (TypeError, ValueError) as error:
            # The copy could not be encoded (a header no encoder takes). Rather than hold the
            # message unacked forever, reject it: the input queue dead-letters it to the DLQ itself.
            log.error("event.copy_unencodable", error=short(error))
            await message.nack(requeue=False)
            self._metrics.dead_lettered.labels("unencodable").inc()
            return "dead_lettered"
        raise AssertionError(f"unknown outcome {outcome!r}")  # pragma: no cover


def _leaves(error: BaseException) -> list[BaseException]:
    """The plain exceptions inside (possibly nested) exception groups."""
    if isinstance(error, BaseExceptionGroup):
        return [leaf for inner in error.exceptions for leaf in _leaves(inner)]
    return [error]
