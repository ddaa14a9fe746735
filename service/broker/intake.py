"""One delivery, start to finish: read its retry state, run the core, settle, observe.

`Intake.process` returns the `Outcome` it settled, so the worker learns from the result what the
message told it (credentials rejected: pause; abandoned: the session is broken). The broker
action itself is `service.broker.settle.settle`'s, the one place outcomes become acks and copies.
"""

from __future__ import annotations

import asyncio
import time
from datetime import UTC

import structlog
from aio_pika.abc import AbstractIncomingMessage

from ..config import Settings
from ..core.events import COMPLAINT_RECEIVED, InboundEvent, InvalidEvent, parse, peek_type
from ..core.handle import handle, internal_error, not_due
from ..core.outcomes import (
    Abandon,
    Carry,
    Completed,
    CredentialsRejected,
    DeadLetter,
    HandOff,
    Outcome,
    Requeue,
)
from ..dialnexa.gateway import Gateway
from ..observe.logs import short
from ..observe.metrics import Children, Metrics
from ..ratelimit.pacer import Lane
from ..retry import Delivery, RetryPolicy, decode_done
from .connection import BROKER_ERRORS, SESSION_ERRORS
from .publisher import Publisher
from .settle import Settled, settle

log = structlog.get_logger("workflow_canceller.intake")

# A refused copy (no queue bound, or nacked by the broker) gives the message back after this long,
# doubling up to the cap while refusals go on: never a requeue loop at broker speed.
REFUSED_BACKOFF_INITIAL_S = 1.0
REFUSED_BACKOFF_MAX_S = 60.0


class Intake:
    """Handles each delivered message; shared by every session of the worker."""

    def __init__(self, settings: Settings, gateway: Gateway, metrics: Metrics) -> None:
        self._settings = settings
        self._gateway = gateway
        self._metrics = metrics
        self._policy = RetryPolicy(
            broker_delays_s=settings.retry_delays,
            call_attempts=settings.call_attempts,
            call_budget_s=settings.call_retry_budget_s,
            backoff_initial_s=settings.call_backoff_initial_s,
            backoff_max_s=settings.call_backoff_max_s,
            max_retry_after_wait_s=settings.max_retry_after_wait_s,
        )
        self._refused_backoff_s = REFUSED_BACKOFF_INITIAL_S
        self._start_window_s = settings.start_window_s  # read once: a property of the settings
        self.longest_hold_s = 0.0
        self._received = Children(metrics.events_received)
        self._processed = Children(metrics.events_processed)
        self._durations = Children(metrics.event_processing_duration)
        self._ages = Children(metrics.event_age)
        self._cancellations = Children(metrics.workflow_cancellations)
        self._handed_off = Children(metrics.handed_off)

    async def process(self, message: AbstractIncomingMessage, publisher: Publisher, queue: str) -> Outcome:
        """Decide and settle one delivery; the outcome settled is returned to the worker."""
        received = time.monotonic()
        delivery = Delivery.of(
            message.headers, message.exchange, int(time.time() * 1000), self._settings.requeue_exchange
        )
        event: InboundEvent | None = None
        try:
            event, outcome = await self._outcome_of(message, publisher, delivery, received)
            result = await self._settle(message, outcome, publisher, queue, delivery)
            if result == "refused":
                refused = f"the broker refused the copy for {type(outcome).__name__}"
                # Never past the hold limit: the give-back waits at most until the hold ends.
                room_s = received + self._settings.max_hold_s - time.monotonic() - 1.0
                outcome = Requeue(refused, max(0.0, min(self._refused(), room_s)))
                result = await self._settle(message, outcome, publisher, queue, delivery)
            else:
                self._refused_backoff_s = REFUSED_BACKOFF_INITIAL_S
        except asyncio.CancelledError:
            await self._settle(message, Abandon("shutdown or broker loss"), publisher, queue, delivery)
            raise
        except SESSION_ERRORS as error:
            outcome = Abandon(short(error))
            result = await self._settle(message, outcome, publisher, queue, delivery)
        self._observe(message, event, outcome, result, delivery, received)
        return outcome

    async def _outcome_of(
        self, message: AbstractIncomingMessage, publisher: Publisher, delivery: Delivery, received: float
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
        total = len(event.data.workflow_ids)
        carry = Carry(total)
        if delivery.done_header is not None or delivery.failed_header is not None:
            done = decode_done(delivery.done_header, total)
            carry = Carry(total, done, decode_done(delivery.failed_header, total))
        if delivery.not_before_ms is not None:
            parked = not_due(delivery.not_before_ms, int(time.time() * 1000), carry)
            if parked is not None:
                return event, parked
        lane: Lane = "complaint" if event.type == COMPLAINT_RECEIVED else "campaign"
        try:
            outcome = await handle(
                event,
                self._gateway.lane(lane),
                publisher,
                policy=self._policy,
                attempt=delivery.attempt,
                done=carry.done,
                failed=carry.failed,
                parallel=self._settings.concurrency,
                start_by=received + self._start_window_s,
                admission=self._gateway.admission(lane),
                stopping=self._gateway.is_closing,
            )
        except Exception as error:  # a bug must not crash the worker: retry, then DLQ
            leaves = _leaves(error)
            if any(isinstance(leaf, BROKER_ERRORS) for leaf in leaves):
                return event, Abandon("the broker went away while publishing")
            log.error("event.internal_error", error=short(leaves[0]), exc_info=leaves[0])
            return event, internal_error(leaves[0], self._policy, delivery.attempt, carry)
        return event, outcome

    async def _settle(
        self,
        message: AbstractIncomingMessage,
        outcome: Outcome,
        publisher: Publisher,
        queue: str,
        delivery: Delivery,
    ) -> Settled:
        return await settle(
            message,
            outcome,
            publisher=publisher,
            queue=queue,
            delivery=delivery,
            settings=self._settings,
            metrics=self._metrics,
        )

    def _refused(self) -> float:
        """The delay before giving back a message whose copy was refused; doubles while it lasts."""
        delay = self._refused_backoff_s
        self._refused_backoff_s = min(delay * 2, REFUSED_BACKOFF_MAX_S)
        return delay

    def _observe(
        self,
        message: AbstractIncomingMessage,
        event: InboundEvent | None,
        outcome: Outcome,
        result: Settled,
        delivery: Delivery,
        received: float,
    ) -> None:
        """Metrics and log lines of a settled message; never raises (the message is settled)."""
        try:
            duration_s = time.monotonic() - received  # how long the delivery was held
            if duration_s > self.longest_hold_s:
                self.longest_hold_s = duration_s
                self._metrics.delivery_hold_max.set(duration_s)
            event_type = event.type if event else peek_type(message.body)
            if result != "abandoned":
                self._processed(event_type, result).inc()
                self._durations(event_type).observe(duration_s)
            counts: dict[str, int] = {}
            for each in outcome.results:
                counts[each.outcome] = counts.get(each.outcome, 0) + 1
                if each.outcome == "not_found":
                    log.info("workflow.settled", workflow_id=each.workflow_id, outcome="not_found")
            if isinstance(outcome, DeadLetter) and event is not None and outcome.carry is not None:
                counts["failed"] = outcome.failed
                ids = event.data.workflow_ids
                for index in sorted(outcome.carry.failed):
                    log.info("workflow.failed", workflow_id=ids[index], reason=outcome.reason)
            for name, count in counts.items():
                self._cancellations(event_type, name).inc(count)
            if isinstance(outcome, HandOff):
                self._handed_off(event_type, outcome.reason).inc()
            elif isinstance(outcome, CredentialsRejected):
                self._handed_off(event_type, "credentials_rejected").inc()
            if event is not None and isinstance(outcome, Completed):
                self._ages(event_type).observe(max(0.0, time.time() - _born_s(event, delivery)))
            log.info(
                "event.settled",
                event_type=event_type,
                result=result,
                outcome=type(outcome).__name__,
                reason=getattr(outcome, "reason", None),
                error=getattr(outcome, "error", None),
                workflows=len(event.data.workflow_ids) if event else 0,
                duration_ms=round(duration_s * 1000, 1),
                **counts,
            )
        except Exception as error:  # noqa: BLE001  # observing must never undo or jam a settled message
            log.error("event.observe_failed", error=short(error))
        finally:
            structlog.contextvars.clear_contextvars()


def _born_s(event: InboundEvent, delivery: Delivery) -> float:
    """When the event was made: its CloudEvents time, else when it was first seen here. A time
    no clock can express (year 1 with an offset) falls back to the first sighting."""
    if event.time is not None:
        born = event.time if event.time.tzinfo else event.time.replace(tzinfo=UTC)  # no offset: UTC
        try:
            return born.timestamp()
        except (OverflowError, ValueError, OSError):
            pass
    return delivery.first_seen_ms / 1000


def _leaves(error: BaseException) -> list[BaseException]:
    """The plain exceptions inside (possibly nested) exception groups."""
    if isinstance(error, BaseExceptionGroup):
        return [leaf for inner in error.exceptions for leaf in _leaves(inner)]
    return [error]
