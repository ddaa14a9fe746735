"""Retry: how hard to try, what a copy carries between attempts, and where it waits.

- `RetryPolicy`: a pure predicate for quick in-process retries of one call (attempts and total time
  capped) and the delay before each broker attempt.
- The header codec: a retry or continuation copy names the queue it returns to, counts the
  attempts made, remembers when the event was first seen, holds a bitmap of the workflows already
  settled and one of those that failed for good, and (for a wait longer than the longest delay
  queue) when it is due. That state is trusted only on the service's own copies, which arrive
  through the requeue exchange: a message replayed from the DLQ, or published with forged
  headers, starts afresh (`Delivery`).
- The delay queue a copy waits in (`delay_queue_for`): one quorum queue per distinct delay.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

from .core.ports import RateLimitedError, ServerError, TransportError

# Headers exchanges ignore "x-" headers when matching, so this one must not start with "x-".
HEADER_QUEUE = "canceller-return-queue"

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


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How hard to try one call in process, and how long to wait between broker attempts."""

    broker_delays_s: tuple[float, ...]
    call_attempts: int = 3
    call_budget_s: float = 30.0
    backoff_initial_s: float = 0.2
    backoff_max_s: float = 5.0
    max_retry_after_wait_s: float = 30.0

    def backoff_hook(self, error: Exception) -> bool | float:
        """Whether a failed call is worth another quick try, and after how long (Retry-After)."""
        if isinstance(error, RateLimitedError):
            wait = error.retry_after_s
            if wait is None:
                return True
            return wait if wait <= self.max_retry_after_wait_s else False
        return isinstance(error, ServerError | TransportError)

    def broker_delay(self, attempt: int, retry_after_s: float | None) -> float | None:
        """Delay before broker attempt `attempt + 1`, or None when attempts are exhausted.

        A Retry-After longer than the configured delay wins, however long (the client has already
        capped what it believes)."""
        if attempt > len(self.broker_delays_s):
            return None
        delay = self.broker_delays_s[attempt - 1]
        return max(delay, retry_after_s or 0.0)


def delay_steps_s(delays_s: tuple[float, ...]) -> tuple[float, ...]:
    """The distinct delays, one delay queue each, shortest first."""
    return tuple(sorted(set(delays_s)))


def delay_queue_for(
    delays_s: tuple[float, ...], queue_name: Callable[[float], str], delay_s: float
) -> tuple[str, bool]:
    """The shortest delay queue that waits at least `delay_s`, and whether it waits long enough:
    when even the longest is shorter, the copy is parked there and parked again until it is due."""
    steps = delay_steps_s(delays_s)
    chosen = next((step for step in steps if step >= delay_s), steps[-1])
    return queue_name(chosen), chosen >= delay_s


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
    def of(
        cls, headers: Mapping[str, object] | None, exchange: str | None, now_ms: int, requeue_exchange: str
    ) -> Delivery:
        """Retry state is trusted only on the service's own copies: those arrive through the
        requeue exchange. The same headers on a message a producer published are ignored. The
        readers (`header_int`, `decode_done`) take any value, so no malformed header raises."""
        headers = headers or {}
        if not isinstance(headers, dict) or HEADER_QUEUE not in headers:
            return cls(attempt=1, first_seen_ms=now_ms)
        if exchange != requeue_exchange:
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
