"""The one place an `Outcome` becomes a broker action:

    Completed            ack
    RetryLater           copy to a delay queue (one more attempt), then ack
    HandOff              continuation copy to the input queue (same attempt), then ack
    CredentialsRejected  continuation copy to the input queue (same attempt), then ack
    DeadLetter           copy to the DLQ naming the failed workflows, then ack
    Requeue              nack with requeue, after a growing delay
    Abandon              nothing: the channel is gone or closing and the broker returns it

`settle` returns what the message counts as (`acked`, `retried`, `dead_lettered`), `abandoned`,
or `refused` when the broker would not take the copy the action needed: nothing was acked, and
the intake settles a `Requeue` instead.
"""

from __future__ import annotations

import asyncio
import time
from functools import partial
from typing import Literal

import structlog
from aio_pika.abc import AbstractIncomingMessage

from ..config import Settings
from ..core.outcomes import (
    Abandon,
    Carry,
    Completed,
    CredentialsRejected,
    DeadLetter,
    HandOff,
    Outcome,
    Requeue,
    RetryLater,
)
from ..core.ports import PublishRefused
from ..observe.logs import short, valid_utf8
from ..observe.metrics import Metrics
from ..retry import (
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
    delay_queue_for,
    encode_done,
)
from .publisher import HeaderValue, Publisher

log = structlog.get_logger("workflow_canceller.settle")

Settled = Literal["acked", "retried", "dead_lettered", "abandoned", "refused"]


async def settle(
    message: AbstractIncomingMessage,
    outcome: Outcome,
    *,
    publisher: Publisher,
    queue: str,
    delivery: Delivery,
    settings: Settings,
    metrics: Metrics,
) -> Settled:
    """Carry out `outcome` on `message`, taken from `queue`."""
    park = partial(_park, message, publisher, queue, delivery, settings)
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
                    HEADER_ERROR: valid_utf8(error)[:500],
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
                metrics.dead_lettered.labels(reason).inc()
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
        metrics.copies_refused.labels(kind).inc()
        return "refused"
    except (TypeError, ValueError) as error:
        # The copy could not be encoded (a header no encoder takes). Rather than hold the
        # message unacked forever, reject it: the input queue dead-letters it to the DLQ itself.
        log.error("event.copy_unencodable", error=short(error))
        await message.nack(requeue=False)
        metrics.dead_lettered.labels("unencodable").inc()
        return "dead_lettered"
    raise AssertionError(f"unknown outcome {outcome!r}")  # pragma: no cover


async def _park(
    message: AbstractIncomingMessage,
    publisher: Publisher,
    queue: str,
    delivery: Delivery,
    settings: Settings,
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
        headers[HEADER_ERROR] = valid_utf8(error)[:500]
    if delay_s <= 0:
        await publisher.to_input(message, headers, drop=(HEADER_NOT_BEFORE,))
        return
    delay_queue, long_enough = delay_queue_for(settings.retry_delays, settings.delay_queue_name, delay_s)
    drop: tuple[str, ...] = (HEADER_NOT_BEFORE,)
    if not long_enough:  # parked in the longest queue, and again until it is due
        headers[HEADER_NOT_BEFORE] = int(time.time() * 1000 + delay_s * 1000)
        drop = ()
    await publisher.to_delay_queue(message, delay_queue, headers, drop)
