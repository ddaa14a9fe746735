"""The pure core: what to do with one parsed event, and what its message deserves afterwards.

`handle(event, api, announce, ...)` cancels the workflows the event names that earlier deliveries
did not settle, has `announce` publish each confirmed result, and returns an `Outcome`. Both are
ports the core owns (`service.core.ports`); it knows nothing of the broker, of metrics or of
logging: `service.broker.settle.settle` turns the outcome into exactly one broker action.

Time is part of the decision. A delivery may be held only so long (RabbitMQ's consumer timeout):
no call starts after `start_by`, and what is left is handed on to a continuation of the message
that carries what is already done. How many workflows start at all is asked of `admission`, which
follows the pace the API allows.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import deque
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field

import stamina

from ..retry import RetryPolicy
from .events import InboundEvent
from .outcomes import (
    Carry,
    Completed,
    CredentialsRejected,
    DeadLetter,
    HandOff,
    Outcome,
    RetryLater,
)
from .ports import (
    UNLIMITED,
    Admission,
    Announcer,
    AuthError,
    CancelApi,
    CancelResult,
    DialNexaError,
    NotStarted,
    PublishRefused,
    RateLimitedError,
    RejectedError,
    ServerError,
    TransportError,
)


def not_due(not_before_ms: int, now_ms: int, carry: Carry) -> HandOff | None:
    """A copy back from a delay queue before its time (a wait longer than the longest delay
    queue): park it again for the rest, without counting an attempt."""
    if not_before_ms <= now_ms + 100:
        return None
    return HandOff(carry, "not_due", delay_s=(not_before_ms - now_ms) / 1000)


def internal_error(error: BaseException, policy: RetryPolicy, attempt: int, carry: Carry) -> Outcome:
    """A bug while handling a message: retry it through the broker, then dead-letter it."""
    text = f"internal error: {type(error).__name__}"
    delay = policy.broker_delay(attempt, None)
    if delay is None:
        pending = frozenset(range(carry.total)) - carry.done
        return DeadLetter("exhausted", text, carry=Carry(carry.total, carry.done, pending))
    return RetryLater(delay, carry, text)


@dataclass(slots=True)
class _Tally:
    results: list[CancelResult] = field(default_factory=list)
    done: set[int] = field(default_factory=set)
    unstarted: list[int] = field(default_factory=list)
    transient: dict[int, DialNexaError | PublishRefused] = field(default_factory=dict)
    permanent: dict[int, DialNexaError] = field(default_factory=dict)
    auth: list[AuthError] = field(default_factory=list)


async def cancel_one(
    api: CancelApi, workflow_id: str, policy: RetryPolicy, start_by: float = math.inf
) -> CancelResult:
    """One workflow's cancel call with quick in-process retries (attempts and time both capped).

    The first attempt runs bare: building stamina's retry state costs more than a fast call, and
    most calls succeed. A retryable first failure is replayed as stamina's first attempt, so its
    backoff (Retry-After included), caps and hooks apply exactly as if stamina had made the call.
    A retry that cannot start before `start_by` raises `NotStarted` (never retried).
    """
    try:
        return await api.cancel(workflow_id, start_by)
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
            return await api.cancel(workflow_id, start_by)
    raise AssertionError("unreachable: stamina re-raises the last error")  # pragma: no cover


async def handle(
    event: InboundEvent,
    api: CancelApi,
    announce: Announcer,
    *,
    policy: RetryPolicy,
    attempt: int = 1,
    done: Collection[int] = frozenset(),
    failed: Collection[int] = frozenset(),
    parallel: int = 8,
    start_by: float = math.inf,
    admission: Admission = UNLIMITED,
    clock: Callable[[], float] = time.monotonic,
    stopping: Callable[[], bool] = lambda: False,
) -> Outcome:
    """Cancel the event's workflows not in `done` or `failed` (by index), starting none after
    `start_by` (or once `stopping()` says the process is shutting down) and no more than
    `admission` grants, and decide the message's fate."""
    ids: Sequence[str] = event.data.workflow_ids
    total = len(ids)
    earlier_failed = frozenset(failed)
    if done or earlier_failed:
        pending = deque(i for i in range(total) if i not in done and i not in earlier_failed)
    else:
        pending = deque(range(total))
    tally = _Tally(done=set(done))

    async def drain(batch: deque[int]) -> None:
        """Cancel the workflows of `batch` one after another (several drains share a batch)."""
        while batch:
            index = batch.popleft()
            try:
                if tally.auth or stopping() or clock() >= start_by:
                    raise NotStarted("the delivery's time is up")
                result = await cancel_one(api, ids[index], policy, start_by)
                if result.outcome != "not_found":  # a missing workflow has nothing to announce
                    await announce.workflow_cancelled(event, result)
            except NotStarted:
                tally.unstarted.append(index)
            except AuthError as error:
                tally.auth.append(error)
                tally.unstarted.append(index)
            except RejectedError as error:
                tally.permanent[index] = error
            except (RateLimitedError, ServerError, TransportError, PublishRefused) as error:
                tally.transient[index] = error
            else:
                tally.results.append(result)
                tally.done.add(index)
            finally:
                admission.give(1)

    while pending and not tally.auth and not stopping() and clock() < start_by:
        granted = min(await admission.take(len(pending), start_by), len(pending))
        if granted <= 0:
            break
        if granted == len(pending):
            batch, pending = pending, deque()
        else:
            batch = deque(pending.popleft() for _ in range(granted))
        workers = min(parallel, granted)
        if workers <= 1:
            await drain(batch)  # most events name one workflow: no task group needed
        else:
            async with asyncio.TaskGroup() as group:
                for _ in range(workers):
                    group.create_task(drain(batch))
    tally.unstarted.extend(pending)
    return _decide(tally, total, earlier_failed, policy, attempt)


def _decide(
    tally: _Tally, total: int, earlier_failed: frozenset[int], policy: RetryPolicy, attempt: int
) -> Outcome:
    """The message's fate from what happened to each of its workflows."""
    results = tuple(tally.results)
    if not (tally.auth or tally.transient or tally.unstarted or tally.permanent or earlier_failed):
        return Completed(results)  # the common case, decided without building the carry
    failed = earlier_failed | frozenset(tally.permanent)
    carry = Carry(total, frozenset(tally.done), failed)
    if tally.auth:
        return CredentialsRejected(carry, _describe(list(tally.auth)), results)
    if tally.transient:
        retry_after = max(
            (e.retry_after_s or 0.0 for e in tally.transient.values() if isinstance(e, RateLimitedError)),
            default=None,
        )
        delay = policy.broker_delay(attempt, retry_after)
        errors = list(tally.transient.values())
        if delay is None:
            unsettled = frozenset(range(total)) - carry.done
            return DeadLetter("exhausted", _describe(errors), results, Carry(total, carry.done, unsettled))
        return RetryLater(delay, carry, _describe(errors), results)
    if tally.unstarted:
        return HandOff(carry, "hold_limit", results)
    if failed:
        errors = list(tally.permanent.values())
        text = _describe(errors) if errors else f"{len(failed)} workflow(s) failed on an earlier attempt"
        return DeadLetter("permanent", text, results, carry)
    return Completed(results)


def _describe(errors: Sequence[Exception]) -> str:
    """A short header-safe summary: how many workflows failed and the first error."""
    first = str(errors[0])[:160]
    return f"{len(errors)} workflow(s) failed; first: {first}"
