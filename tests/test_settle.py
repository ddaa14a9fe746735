"""`service.broker.settle.settle`, the one place an outcome becomes a broker action: every variant against a
fake message and a fake publisher, no broker needed."""

from __future__ import annotations

import time
from typing import Any

import pytest
from prometheus_client import CollectorRegistry
from pydantic import SecretStr

from service.broker.settle import settle as settle_outcome
from service.config import Settings
from service.core.outcomes import (
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
from service.core.ports import PublishRefused
from service.observe.metrics import Metrics
from service.retry import (
    HEADER_ATTEMPTS,
    HEADER_DONE,
    HEADER_FAILED,
    HEADER_NOT_BEFORE,
    HEADER_QUEUE,
    HEADER_REASON,
    Delivery,
)

QUEUE = "workflow-canceller.campaign-ended"


class FakeMessage:
    """What settle may do to a delivery: ack, nack; every call is recorded."""

    def __init__(self) -> None:
        self.actions: list[tuple[str, bool | None]] = []

    async def ack(self) -> None:
        self.actions.append(("ack", None))

    async def nack(self, requeue: bool = True) -> None:
        self.actions.append(("nack", requeue))


class FakePublisher:
    """Records each copy settle publishes; refuses them all when `refuse` is set."""

    def __init__(self, refuse: bool = False) -> None:
        self.refuse = refuse
        self.copies: list[tuple[str, str | None, dict[str, Any], tuple[str, ...]]] = []

    def _record(self, kind: str, target: str | None, headers: dict[str, Any], drop: tuple[str, ...]) -> None:
        if self.refuse:
            raise PublishRefused("unroutable", "unroutable")
        self.copies.append((kind, target, headers, drop))

    async def to_input(self, _original: object, headers: dict[str, Any], drop: tuple[str, ...] = ()) -> None:
        self._record("input", None, headers, drop)

    async def to_delay_queue(
        self, _original: object, queue: str, headers: dict[str, Any], drop: tuple[str, ...] = ()
    ) -> None:
        self._record("delay", queue, headers, drop)

    async def to_dead_letter(
        self, _original: object, headers: dict[str, Any], drop: tuple[str, ...] = ()
    ) -> None:
        self._record("dlq", None, headers, drop)


SETTINGS = Settings(_env_file=None, dialnexa_api_key=SecretStr("key_1:s3cret"), retry_delays=(1.0, 30.0))  # type: ignore[call-arg]


async def settle(
    outcome: Outcome, refuse: bool = False, attempt: int = 2
) -> tuple[str, FakeMessage, FakePublisher]:
    """Settle `outcome` for a delivery on its `attempt`-th try."""
    message, publisher = FakeMessage(), FakePublisher(refuse)
    delivery = Delivery(attempt=attempt, first_seen_ms=1_000)
    result = await settle_outcome(
        message,  # type: ignore[arg-type]
        outcome,
        publisher=publisher,  # type: ignore[arg-type]
        queue=QUEUE,
        delivery=delivery,
        settings=SETTINGS,
        metrics=Metrics.build(CollectorRegistry()),
    )
    return result, message, publisher


CARRY = Carry(3, frozenset({0}), frozenset({2}))


async def test_completed_is_acked() -> None:
    """Completed: ack, nothing published."""
    result, message, publisher = await settle(Completed())
    assert (result, message.actions, publisher.copies) == ("acked", [("ack", None)], [])


async def test_retry_later_parks_a_copy_counting_the_attempt_then_acks() -> None:
    """RetryLater: a delay-queue copy with attempts = this attempt and the carried state, then ack."""
    result, message, publisher = await settle(RetryLater(1.0, CARRY, "503"))
    assert (result, message.actions) == ("retried", [("ack", None)])
    [(kind, queue, headers, drop)] = publisher.copies
    assert (kind, queue) == ("delay", "workflow-canceller.delay.1000ms")
    assert headers[HEADER_ATTEMPTS] == 2
    assert (headers[HEADER_QUEUE], headers[HEADER_DONE], headers[HEADER_FAILED]) == (QUEUE, "3:1", "3:4")
    assert HEADER_NOT_BEFORE in drop


async def test_a_retry_longer_than_every_delay_queue_says_when_it_is_due() -> None:
    """A wait past the longest delay queue parks there with the time it is due."""
    before = int(time.time() * 1000)  # whole milliseconds, as the header carries them
    _, _, publisher = await settle(RetryLater(600.0, CARRY, "429"))
    [(kind, queue, headers, _drop)] = publisher.copies
    assert (kind, queue) == ("delay", "workflow-canceller.delay.30000ms")
    assert headers[HEADER_NOT_BEFORE] >= before + 600_000


@pytest.mark.parametrize(
    "outcome",
    [HandOff(CARRY, "hold_limit"), CredentialsRejected(CARRY, "401")],
    ids=["hand-off", "credentials"],
)
async def test_continuations_go_straight_back_without_counting_an_attempt(outcome: Outcome) -> None:
    """HandOff and CredentialsRejected: a continuation to the input queue, same attempt, then ack."""
    result, message, publisher = await settle(outcome)
    assert (result, message.actions) == ("retried", [("ack", None)])
    [(kind, _queue, headers, drop)] = publisher.copies
    assert kind == "input"
    assert HEADER_NOT_BEFORE in drop  # a past park's due time does not travel on
    assert (headers[HEADER_ATTEMPTS], headers[HEADER_DONE], headers[HEADER_QUEUE]) == (1, "3:1", QUEUE)


async def test_not_due_is_parked_again_without_counting_an_attempt() -> None:
    """HandOff(not_due) with a delay: a delay-queue copy with the same attempt number."""
    _, _, publisher = await settle(HandOff(CARRY, "not_due", delay_s=20.0))
    [(kind, queue, headers, _drop)] = publisher.copies
    assert (kind, queue, headers[HEADER_ATTEMPTS]) == ("delay", "workflow-canceller.delay.30000ms", 1)


async def test_dead_letter_names_the_failed_workflows() -> None:
    """DeadLetter: a DLQ copy with the reason and the failed bitmap, without the return queue."""
    result, message, publisher = await settle(DeadLetter("permanent", "422", carry=CARRY))
    assert (result, message.actions) == ("dead_lettered", [("ack", None)])
    [(kind, _queue, headers, drop)] = publisher.copies
    assert (kind, headers[HEADER_REASON], headers[HEADER_FAILED]) == ("dlq", "permanent", "3:4")
    assert HEADER_QUEUE in drop


async def test_requeue_gives_back() -> None:
    """Requeue: nack with requeue, nothing published."""
    result, message, publisher = await settle(Requeue("refused", after_s=0.0))
    assert (result, message.actions, publisher.copies) == ("retried", [("nack", True)], [])


async def test_abandon_does_nothing() -> None:
    """Abandon: no ack, no nack, no copy (the broker returns it with the channel)."""
    result, message, publisher = await settle(Abandon("channel closed"))
    assert (result, message.actions, publisher.copies) == ("abandoned", [], [])


@pytest.mark.parametrize(
    "outcome",
    [RetryLater(1.0, CARRY, "x"), HandOff(CARRY, "hold_limit"), DeadLetter("invalid", "bad")],
    ids=["retry", "hand-off", "dead-letter"],
)
async def test_a_refused_copy_leaves_the_delivery_unsettled(outcome: Outcome) -> None:
    """A copy the broker refuses: `refused`, and neither ack nor nack (the caller requeues)."""
    result, message, _ = await settle(outcome, refuse=True)
    assert (result, message.actions) == ("refused", [])
