"""Retry state carried in message headers between broker attempts.

A retry or continuation copy names the queue it returns to, counts the attempts made, remembers
when the event was first seen, holds a bitmap of the workflows already settled and one of those
that failed for good, and (for a wait longer than the longest delay queue) when it is due. That
state is trusted only on the service's own copies, which arrive through the requeue exchange: a
message replayed from the DLQ, or published with forged headers, starts afresh.
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
# Workflows (by index, as a bitmap like HEADER_DONE) that failed for good; on DLQ copies too.
HEADER_FAILED = "x-canceller-failed"
# A copy parked for longer than the longest delay queue is not due before this time (ms).
HEADER_NOT_BEFORE = "x-canceller-not-before-ms"
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
    """The indexes a bitmap header names, or none when the header is absent, unreadable (not
    UTF-8, not a number) or was written for another body."""
    if not isinstance(value, str | bytes | bytearray):
        return frozenset()
    text = bytes(value).decode("utf-8", "replace") if not isinstance(value, str) else value
    count, _, bitmap = text[:2_000].partition(":")
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
    done_header: object = None
    failed_header: object = None
    not_before_ms: int | None = None

    @classmethod
    def of(cls, message: AbstractIncomingMessage, now_ms: int, requeue_exchange: str) -> Delivery:
        """Retry state is trusted only on the service's own copies: those arrive through the
        requeue exchange. The same headers on a message a producer published are ignored. The
        readers (`header_int`, `decode_done`) take any value, so no malformed header raises."""
        headers = message.headers or {}
        if not isinstance(headers, dict) or HEADER_QUEUE not in headers:
            return cls(attempt=1, first_seen_ms=now_ms)
        if message.exchange != requeue_exchange:
            return cls(attempt=1, first_seen_ms=now_ms)
        return cls(
            attempt=_int(headers.get(HEADER_ATTEMPTS)) + 1,
            first_seen_ms=_int(headers.get(HEADER_FIRST_SEEN)) or now_ms,
            done_header=headers.get(HEADER_DONE),
            failed_header=headers.get(HEADER_FAILED),
            not_before_ms=header_int(headers.get(HEADER_NOT_BEFORE)),
        )


_MAX_HEADER_INT = 2**62  # what comes back is written again as a signed 64-bit AMQP integer


def header_int(value: object) -> int | None:
    """A non-negative header number, clamped so it can always be encoded again (None when the
    header is absent or not a number)."""
    if value is None:
        return None
    if isinstance(value, bytes | bytearray):
        value = bytes(value).decode("utf-8", "replace")
    try:
        number = int(str(value)[:20])
    except ValueError:
        return None
    return min(max(number, 0), _MAX_HEADER_INT)


def _int(value: object) -> int:
    return header_int(value) or 0
