"""One message, start to finish: parse, run the core, settle, observe.

`Processor.process` returns the `Outcome` it settled, so the worker learns from the result what
the message told it (credentials rejected: pause; abandoned: the session is broken).
`Processor.settle` is the one place that turns an `Outcome` into a broker action:

    Completed            ack
    RetryLater           copy to a delay queue (one more attempt), then ack
    HandOff              continuation copy to the input queue (same attempt), then ack
    CredentialsRejected  continuation copy to the input queue (same attempt), then ack
    DeadLetter           copy to the DLQ naming the failed workflows, then ack
    Requeue              nack with requeue, after a growing delay
    Abandon              nothing: the channel is gone or closing and the broker returns it
"""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime
from functools import partial

import structlog
from aio_pika.abc import AbstractIncomingMessage

from . import topology
from .broker import BROKER_ERRORS as BROKER_ERRORS
from .capacity import Capacity
from .config import Settings
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
    Abandon,
    Carry,
    Completed,
    CredentialsRejected,
    DeadLetter,
    HandOff,
    Outcome,
    Requeue,
    RetryLater,
    RetryPolicy,
    handle,
    internal_error,
    not_due,
)
from .logs import encodable
from .metrics import Children, Metrics
from .pacing import Lane
from .ports import CancelResult, PublishRefused
from .publisher import HeaderValue, Publisher
from .retries import (
    HEADER_ATTEMPTS,
    HEADER_DEAD_LETTERED,
    HEADER_DONE,
    HEADER_ERROR,
    HEADER_FAILED,
    HEADER_FIRST_SEEN,
    HEADER_NOT_BEFORE,
    HEADER_QUEUE,
    HEADER_REASON,
    HEADER_SOURCE_QUEUE,
    Delivery,
    decode_done,
    encode_done,
)
from .supervision import short

log = structlog.get_logger("workflow_canceller.processing")

# A refused copy (no queue bound, or nacked by the broker) gives the message back after this long,
# doubling up to the cap while refusals go on: never a requeue loop at broker speed.
REFUSED_BACKOFF_INITIAL_S = 1.0
REFUSED_BACKOFF_MAX_S = 60.0


class BrokerLost(Exception):
    """The connection, a channel or a consumer went away: start a new session."""


SESSION_ERRORS = (BrokerLost, *BROKER_ERRORS)


class Processor:
    """Handles each delivered message; shared by every session of the worker."""

    def __init__(self, settings: Settings, capacity: Capacity, metrics: Metrics) -> None:
        self._settings = settings
        self._capacity = capacity
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
        self._published = metrics.events_published.labels(WORKFLOW_CANCELLED)

    async def process(self, message: AbstractIncomingMessage, publisher: Publisher, queue: str) -> Outcome:
        """Decide and settle one delivery; the outcome settled is returned to the worker."""
        received = time.monotonic()
        delivery = Delivery.of(message, int(time.time() * 1000), self._settings.requeue_exchange)
        event: InboundEvent | None = None
        try:
            event, outcome = await self._outcome_of(message, publisher, delivery, received)
            result = await self.settle(message, outcome, publisher, queue, delivery)
            if result == "refused":
                refused = f"the broker refused the copy for {type(outcome).__name__}"
                # Never past the hold limit: the give-back waits at most until the hold ends.
                room_s = received + self._settings.max_hold_s - time.monotonic() - 1.0
                outcome = Requeue(refused, max(0.0, min(self._refused(), room_s)))
                result = await self.settle(message, outcome, publisher, queue, delivery)
            else:
                self._refused_backoff_s = REFUSED_BACKOFF_INITIAL_S
        except asyncio.CancelledError:
            await self.settle(message, Abandon("shutdown or broker loss"), publisher, queue, delivery)
            raise
        except SESSION_ERRORS as error:
            outcome = Abandon(short(error))
            result = await self.settle(message, outcome, publisher, queue, delivery)
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
                self._capacity.lane(lane),
                partial(self._emit, publisher, trigger_of(event)),
                policy=self._policy,
                attempt=delivery.attempt,
                done=carry.done,
                failed=carry.failed,
                parallel=self._settings.concurrency,
                start_by=received + self._start_window_s,
                admission=self._capacity.admission(lane),
                stopping=self._capacity.is_closing,
            )
        except Exception as error:  # a bug must not crash the worker: retry, then DLQ
            leaves = _leaves(error)
            if any(isinstance(leaf, BROKER_ERRORS) for leaf in leaves):
                return event, Abandon("the broker went away while publishing")
            log.error("event.internal_error", error=short(leaves[0]), exc_info=leaves[0])
            return event, internal_error(leaves[0], self._policy, delivery.attempt, carry)
        return event, outcome

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
        log.info("workflow.settled", workflow_id=result.workflow_id, outcome=result.outcome)

    def _refused(self) -> float:
        """The delay before giving back a message whose copy was refused; doubles while it lasts."""
        delay = self._refused_backoff_s
        self._refused_backoff_s = min(delay * 2, REFUSED_BACKOFF_MAX_S)
        return delay

    async def settle(
        self,
        message: AbstractIncomingMessage,
        outcome: Outcome,
        publisher: Publisher,
        queue: str,
        delivery: Delivery,
    ) -> str:
        """The one place an outcome becomes a broker action; returns the `result` it counts as
        (`acked`, `retried`, `dead_lettered`), `abandoned`, or `refused` when the broker would not
        take the copy the action needed (nothing was acked: the caller settles a `Requeue`)."""
        park = partial(self._park, message, publisher, queue, delivery)
        try:
            match outcome:
                case Completed():
                    await message.ack()
                    return "acked"
                case RetryLater(delay_s=delay_s, carry=carry, error=error):
                    await park(carry, delay_s, delivery.attempt, error)
                    await message.ack()
                    return "retried"
                case HandOff(carry=carry, delay_s=delay_s):
                    await park(carry, delay_s, delivery.attempt - 1)
                    await message.ack()
                    return "retried"
                case CredentialsRejected(carry=carry, error=error):
                    await park(carry, 0.0, delivery.attempt - 1, error)
                    await message.ack()
                    return "retried"
                case DeadLetter(reason=reason, error=error, carry=carry):
                    headers: dict[str, HeaderValue] = {
                        HEADER_REASON: reason,
                        HEADER_ERROR: encodable(error)[:500],
                        HEADER_ATTEMPTS: delivery.attempt,
                        HEADER_SOURCE_QUEUE: queue,
                        HEADER_DEAD_LETTERED: int(time.time() * 1000),
                    }
                    if carry is not None:
                        headers[HEADER_DONE] = encode_done(carry.done, carry.total)
                        headers[HEADER_FAILED] = encode_done(carry.failed, carry.total)
                    # A replay from the DLQ starts afresh (or, for named failures, with only those).
                    await publisher.to_dead_letter(message, headers, drop=(HEADER_QUEUE, HEADER_NOT_BEFORE))
                    await message.ack()
                    self._metrics.dead_lettered.labels(reason).inc()
                    return "dead_lettered"
                case Requeue(after_s=after_s):
                    # The refusal itself was logged at ERROR (event.copy_refused) where it happened.
                    log.warning("event.given_back", after_s=round(after_s, 2))
                    await asyncio.sleep(after_s)
                    await message.nack(requeue=True)
                    return "retried"
                case Abandon(reason=reason):
                    log.warning("event.abandoned", reason=reason, note="the broker redelivers it")
                    return "abandoned"
        except PublishRefused as error:
            kind = type(outcome).__name__
            log.error("event.copy_refused", kind=kind, error=str(error))
            self._metrics.copies_refused.labels(kind).inc()
            return "refused"
        except (TypeError, ValueError) as error:
            # The copy could not be encoded (a header no encoder takes). Rather than hold the
            # message unacked forever, reject it: the input queue dead-letters it to the DLQ itself.
            log.error("event.copy_unencodable", error=short(error))
            await message.nack(requeue=False)
            self._metrics.dead_lettered.labels("unencodable").inc()
            return "dead_lettered"
        raise AssertionError(f"unknown outcome {outcome!r}")  # pragma: no cover

    async def _park(
        self,
        message: AbstractIncomingMessage,
        publisher: Publisher,
        queue: str,
        delivery: Delivery,
        carry: Carry,
        delay_s: float,
        attempts: int,
        error: str = "",
    ) -> None:
        """A confirmed copy carrying `carry`: straight back to `queue`, or via a delay queue."""
        headers: dict[str, HeaderValue] = {
            HEADER_QUEUE: queue,
            HEADER_ATTEMPTS: max(attempts, 0),
            HEADER_FIRST_SEEN: delivery.first_seen_ms,
            HEADER_DONE: encode_done(carry.done, carry.total),
            HEADER_FAILED: encode_done(carry.failed, carry.total),
        }
        if error:
            headers[HEADER_ERROR] = encodable(error)[:500]
        if delay_s <= 0:
            await publisher.to_input(message, headers, drop=(HEADER_NOT_BEFORE,))
            return
        delay_queue, long_enough = topology.delay_queue_for(self._settings, delay_s)
        drop: tuple[str, ...] = (HEADER_NOT_BEFORE,)
        if not long_enough:  # parked in the longest queue, and again until it is due
            headers[HEADER_NOT_BEFORE] = int(time.time() * 1000 + delay_s * 1000)
            drop = ()
        await publisher.to_delay_queue(message, delay_queue, headers, drop)

    def _observe(
        self,
        message: AbstractIncomingMessage,
        event: InboundEvent | None,
        outcome: Outcome,
        result: str,
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
