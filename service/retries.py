"""Retry state carried in message headers between broker attempts.

A retry copy names the queue it returns to, counts the attempts made, remembers when the event
was first seen, and holds a bitmap of the workflows already settled. That state is trusted only on
the service's own retry copies, which arrive through the requeue exchange: a message replayed from
the DLQ, or published with forged headers, starts afresh.
"""

from __future__ import annotations

from dataclasses import dataclass

from aio_pika.abc import AbstractIncomingMessage

from .topology import HEADER_QUEUE as HEADER_QUEUE

HEADER_REASON = "x-canceller-reason"
HEADER_ERROR = "x-canceller-error"
HEADER_ATTEMPTS = "x-canceller-attempts"
HEADER_DONE = "x-canceller-done"
HEADER_FIRST_SEEN = "x-canceller-first-seen-ms"
# On dead-letter copies: the input queue the message was taken from, and when it was dead-lettered.
HEADER_SOURCE_QUEUE = "x-canceller-source-queue"
HEADER_DEAD_LETTERED = "x-canceller-dead-lettered-ms"
# On messages replayed from the DLQ (`workflow-canceller dlq replay`): when, and how many times.
HEADER_REPLAYED_AT = "x-canceller-replayed-at"
HEADER_REPLAYS = "x-canceller-replays"


def encode_done(done: frozenset[int], total: int) -> str:
    """`<total>:<hex bitmap>` of the workflow indexes already settled."""
    bits = 0
    for index in done:
        bits |= 1 << index
    return f"{total}:{bits:x}"


def decode_done(value: object, total: int) -> frozenset[int]:
    """The settled indexes, or none when the header is absent or was written for another body."""
    if not isinstance(value, str | bytes):
        return frozenset()
    text = value.decode() if isinstance(value, bytes) else value
    count, _, bitmap = text.partition(":")
    try:
        if int(count) != total:
            return frozenset()
        bits = int(bitmap, 16)
    except ValueError:
        return frozenset()
    return frozenset(i for i in range(total) if bits >> i & 1)


@dataclass(frozen=True, slots=True)
class Delivery:
    """What the headers of one delivery say about earlier attempts."""

    attempt: int
    first_seen_ms: int
    done_header: object

    @classmethod
    def of(cls, message: AbstractIncomingMessage, now_ms: int, requeue_exchange: str) -> Delivery:
        """Retry state is trusted only on the service's own retry copies: those arrive through the
        requeue exchange. The same headers on a message a producer published are ignored."""
        headers = message.headers or {}
        if HEADER_QUEUE not in headers or message.exchange != requeue_exchange:
            return cls(attempt=1, first_seen_ms=now_ms, done_header=None)
        return cls(
            attempt=_int(headers.get(HEADER_ATTEMPTS)) + 1,
            first_seen_ms=_int(headers.get(HEADER_FIRST_SEEN)) or now_ms,
            done_header=headers.get(HEADER_DONE),
        )


_MAX_HEADER_INT = 2**62  # what comes back is written again as a signed 64-bit AMQP integer


def header_int(value: object) -> int | None:
    """A non-negative header number, clamped so it can always be encoded again (None when the
    header is absent or not a number)."""
    if value is None:
        return None
    try:
        number = int(str(value)[:20])
    except ValueError:
        return None
    return min(max(number, 0), _MAX_HEADER_INT)


def _int(value: object) -> int:
    return header_int(value) or 0
