"""The pure core: what to do with one parsed event, and what its message deserves afterwards.

`handle(event, api, emit, ...)` cancels every workflow the event names (skipping those a previous
attempt already confirmed), hands each confirmed result to `emit` (which publishes it), and returns
an `Outcome`. It knows nothing of the broker, of metrics or of logging: the consumer turns the
outcome into ack / retry / dead-letter / requeue in exactly one place.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Collection, Sequence
from dataclasses import dataclass, field
from typing import Literal, Protocol

import stamina

from .dialnexa import (
    AuthError,
    CancelResult,
    DialNexaError,
    RateLimitedError,
    RejectedError,
    ServerError,
    TransportError,
)
from .events import InboundEvent


class CancelApi(Protocol):
    async def cancel(self, workflow_id: str) -> CancelResult: ...


Emit = Callable[[CancelResult], Awaitable[None]]


class PublishRefused(Exception):
    """`emit` could not get the outbound event accepted (e.g. unroutable): retry like a 5xx."""


DeadLetterReason = Literal["invalid", "permanent", "exhausted"]


@dataclass(frozen=True, slots=True)
class Completed:
    """Every workflow is settled: ack the message."""

    results: tuple[CancelResult, ...]


@dataclass(frozen=True, slots=True)
class RetryLater:
    """Transient failures remain: redeliver through the broker after `delay_s`."""

    delay_s: float
    done: frozenset[int]
    error: str
    total: int
    results: tuple[CancelResult, ...] = ()


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """Send the message to the DLQ with a reason; never retried by the service."""

    reason: DeadLetterReason
    error: str
    results: tuple[CancelResult, ...] = ()
    failed: int = 0


@dataclass(frozen=True, slots=True)
class CredentialsRejected:
    """DialNexa rejected our key: give the message back and pause consumption."""

    error: str
    results: tuple[CancelResult, ...] = ()


Outcome = Completed | RetryLater | DeadLetter | CredentialsRejected


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
        """Delay before broker attempt `attempt + 1`, or None when attempts are exhausted."""
        if attempt > len(self.broker_delays_s):
            return None
        delay = self.broker_delays_s[attempt - 1]
        return max(delay, retry_after_s or 0.0)


@dataclass(slots=True)
class _Tally:
    results: list[CancelResult] = field(default_factory=list)
    done: set[int] = field(default_factory=set)
    transient: list[DialNexaError | PublishRefused] = field(default_factory=list)
    permanent: list[DialNexaError] = field(default_factory=list)
    auth: list[AuthError] = field(default_factory=list)


async def cancel_one(api: CancelApi, workflow_id: str, policy: RetryPolicy) -> CancelResult:
    """One workflow's cancel call with quick in-process retries (attempts and time both capped).

    The first attempt runs bare: building stamina's retry state costs more than a fast call, and
    most calls succeed. A retryable first failure is replayed as stamina's first attempt, so its
    backoff (Retry-After included), caps and hooks apply exactly as if stamina had made the call.
    """
    try:
        return await api.cancel(workflow_id)
    except DialNexaError as error:
        if policy.call_attempts <= 1 or policy.backoff_hook(error) is False:
            raise
        first_failure: list[DialNexaError] = [error]
    async for attempt in stamina.retry_context(
        on=policy.backoff_hook,
        attempts=policy.call_attempts,
        timeout=policy.call_budget_s,
        wait_initial=policy.backoff_initial_s,
        wait_max=policy.backoff_max_s,
        wait_jitter=policy.backoff_initial_s,
    ):
        with attempt:
            if first_failure:
                raise first_failure.pop()
            return await api.cancel(workflow_id)
    raise AssertionError("unreachable: stamina re-raises the last error")  # pragma: no cover


async def handle(
    event: InboundEvent,
    api: CancelApi,
    emit: Emit,
    *,
    policy: RetryPolicy,
    attempt: int = 1,
    done: Collection[int] = frozenset(),
    parallel: int = 8,
) -> Outcome:
    """Cancel the event's workflows not in `done` (by index) and decide the message's fate."""
    ids: Sequence[str] = event.data.workflow_ids
    pending = iter([i for i in range(len(ids)) if i not in done])
    tally = _Tally(done=set(done))

    async def worker() -> None:
        for index in pending:
            if tally.auth:
                return  # the key is rejected: every further call would be too
            try:
                result = await cancel_one(api, ids[index], policy)
            except AuthError as error:
                tally.auth.append(error)
                return
            except RejectedError as error:
                tally.permanent.append(error)
                continue
            except (RateLimitedError, ServerError, TransportError) as error:
                tally.transient.append(error)
                continue
            if result.outcome != "not_found":
                try:
                    await emit(result)
                except PublishRefused as error:
                    tally.transient.append(error)
                    continue
            tally.results.append(result)
            tally.done.add(index)

    workers = max(1, min(parallel, len(ids) - len(done)))
    if workers == 1:
        await worker()  # most events name one workflow: no task group needed
    else:
        async with asyncio.TaskGroup() as group:
            for _ in range(workers):
                group.create_task(worker())

    results = tuple(tally.results)
    if tally.auth:
        return CredentialsRejected(error=_describe(tally.auth), results=results)
    if tally.permanent:
        return DeadLetter("permanent", _describe(tally.permanent), results, len(tally.permanent))
    if tally.transient:
        retry_after = max(
            (e.retry_after_s or 0.0 for e in tally.transient if isinstance(e, RateLimitedError)),
            default=None,
        )
        delay = policy.broker_delay(attempt, retry_after)
        if delay is None:
            return DeadLetter("exhausted", _describe(tally.transient), results, len(tally.transient))
        return RetryLater(delay, frozenset(tally.done), _describe(tally.transient), len(ids), results)
    return Completed(results)


def _describe(errors: Sequence[Exception]) -> str:
    """A short header-safe summary: how many workflows failed and the first error."""
    first = str(errors[0])[:160]
    return f"{len(errors)} workflow(s) failed; first: {first}"
