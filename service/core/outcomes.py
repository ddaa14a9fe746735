"""What the core decides for one message: an `Outcome`, and the `Carry` a copy takes along.

`service.broker.settle.settle` is the one place an outcome becomes a broker action.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from .ports import CancelResult

DeadLetterReason = Literal["invalid", "permanent", "exhausted"]
HandOffReason = Literal["hold_limit", "not_due"]


@dataclass(frozen=True, slots=True)
class Carry:
    """What a copy of the message carries to its next delivery: which workflows (by index) are
    settled, and which failed for good (to be named when the message is dead-lettered)."""

    total: int
    done: frozenset[int] = frozenset()
    failed: frozenset[int] = frozenset()


@dataclass(frozen=True, slots=True)
class Completed:
    """Every workflow is settled: ack the message."""

    results: tuple[CancelResult, ...] = ()


@dataclass(frozen=True, slots=True)
class RetryLater:
    """Transient failures remain: a copy waits `delay_s` in a delay queue (one more attempt)."""

    delay_s: float
    carry: Carry
    error: str
    results: tuple[CancelResult, ...] = ()


@dataclass(frozen=True, slots=True)
class HandOff:
    """Not finished in time (or not due yet): a continuation copy with the same attempt number
    goes back to the input queue (after `delay_s`, when not due yet), then the ack."""

    carry: Carry
    reason: HandOffReason
    results: tuple[CancelResult, ...] = ()
    delay_s: float = 0.0


@dataclass(frozen=True, slots=True)
class CredentialsRejected:
    """DialNexa rejected our key: a continuation copy goes back, and the worker pauses intake."""

    carry: Carry
    error: str
    results: tuple[CancelResult, ...] = ()


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """Send a copy to the DLQ with a reason and the workflows that failed; never retried here."""

    reason: DeadLetterReason
    error: str
    results: tuple[CancelResult, ...] = ()
    carry: Carry | None = None  # None for a message that could not be read at all

    @property
    def failed(self) -> int:
        return len(self.carry.failed) if self.carry else 0


@dataclass(frozen=True, slots=True)
class Requeue:
    """Give the delivery back to its queue (`nack`, requeue) after `after_s`: the broker refused
    the copy this message needed, so try the whole message again later."""

    error: str
    after_s: float = 0.0
    results: tuple[CancelResult, ...] = ()


@dataclass(frozen=True, slots=True)
class Abandon:
    """Leave the delivery unacked: the channel is gone or closing, and the broker returns it."""

    reason: str
    results: tuple[CancelResult, ...] = ()


Outcome = Completed | RetryLater | HandOff | CredentialsRejected | DeadLetter | Requeue | Abandon
