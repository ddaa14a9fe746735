"""The pure core, table-driven against a fake API: which outcome each combination of answers gives."""

from __future__ import annotations

import pytest
import stamina

from service.core.events import CampaignEnded
from service.core.handle import handle, internal_error, not_due
from service.core.outcomes import (
    Carry,
    Completed,
    CredentialsRejected,
    DeadLetter,
    HandOff,
    RetryLater,
)
from service.core.ports import (
    AuthError,
    CancelResult,
    NotStarted,
    PublishRefused,
    RateLimitedError,
    RejectedError,
    ServerError,
    TransportError,
)
from service.retry import RetryPolicy
from tests.fakes import Announcing, FakeApi, Sink
from tests.support import campaign

POLICY = RetryPolicy(broker_delays_s=(1.0, 5.0), call_attempts=3)


@pytest.fixture(autouse=True)
def _no_backoff() -> object:
    """stamina's test mode: no waiting between quick retries, attempts kept as configured."""
    with stamina.set_testing(True, attempts=3, cap=True):
        yield


def event(*ids: str) -> CampaignEnded:
    """A parsed campaign-ended event naming `ids`."""
    return CampaignEnded.model_validate(campaign(list(ids)))


async def test_all_cancelled_completes() -> None:
    """Every workflow cancelled: Completed, one emit each."""
    api, sink = FakeApi(), Sink()
    outcome = await handle(event("a", "b"), api, sink, policy=POLICY)
    assert isinstance(outcome, Completed)
    assert sorted(r.workflow_id for r in sink.emitted) == ["a", "b"]


async def test_409_emits_already_terminal_and_404_emits_nothing() -> None:
    """already_terminal is emitted; not_found is a final result that is not emitted."""
    api, sink = FakeApi(), Sink()
    api.script("a", [CancelResult("a", "already_terminal", "completed")])
    api.script("b", [CancelResult("b", "not_found")])
    outcome = await handle(event("a", "b"), api, sink, policy=POLICY)
    assert isinstance(outcome, Completed)
    assert [(r.workflow_id, r.outcome) for r in sink.emitted] == [("a", "already_terminal")]
    assert {r.outcome for r in outcome.results} == {"already_terminal", "not_found"}


@pytest.mark.parametrize(
    "error",
    [ServerError(503, "x"), TransportError("reset"), RateLimitedError(429, "slow", 0.01)],
    ids=["5xx", "transport", "429"],
)
async def test_transient_error_is_retried_in_process(error: Exception) -> None:
    """One transient failure then success: retried quickly, Completed."""
    api, sink = FakeApi(), Sink()
    api.script("a", [error])
    outcome = await handle(event("a"), api, sink, policy=POLICY)
    assert isinstance(outcome, Completed)
    assert api.calls == ["a", "a"]


async def test_persistent_transient_error_asks_for_broker_retry() -> None:
    """Still failing after the quick attempts: RetryLater with the first delay and the done set."""
    api, sink = FakeApi(), Sink()
    api.script("b", [ServerError(502, "bad gateway")] * 3)
    outcome = await handle(event("a", "b", "c"), api, sink, policy=POLICY)
    assert isinstance(outcome, RetryLater)
    assert outcome.delay_s == 1.0
    assert outcome.carry.done == {0, 2}
    assert outcome.carry.total == 3
    assert "502" in outcome.error


async def test_retry_skips_workflows_already_done() -> None:
    """On a later attempt the indexes in `done` are not called again."""
    api, sink = FakeApi(), Sink()
    outcome = await handle(event("a", "b", "c"), api, sink, policy=POLICY, attempt=2, done={0, 2})
    assert isinstance(outcome, Completed)
    assert api.calls == ["b"]


async def test_last_attempt_failing_is_exhausted() -> None:
    """Past the last broker delay the outcome is DeadLetter(exhausted)."""
    api, sink = FakeApi(), Sink()
    api.script("a", [ServerError(500, "boom")] * 3)
    outcome = await handle(event("a"), api, sink, policy=POLICY, attempt=3)
    assert isinstance(outcome, DeadLetter)
    assert (outcome.reason, outcome.failed) == ("exhausted", 1)


async def test_long_retry_after_goes_through_the_broker_no_sooner() -> None:
    """A Retry-After beyond the in-process cap is not waited in memory; the broker delay covers it."""
    api, sink = FakeApi(), Sink()
    api.script("a", [RateLimitedError(429, "slow", 90.0)])
    outcome = await handle(event("a"), api, sink, policy=POLICY)
    assert isinstance(outcome, RetryLater)
    assert outcome.delay_s == 90.0
    assert api.calls == ["a"]


@pytest.mark.parametrize("status", [400, 422, 418])
async def test_other_4xx_is_permanent(status: int) -> None:
    """Other 4xx answers dead-letter the message as permanent; other workflows still run."""
    api, sink = FakeApi(), Sink()
    api.script("a", [RejectedError(status, "no")])
    outcome = await handle(event("a", "b"), api, sink, policy=POLICY)
    assert isinstance(outcome, DeadLetter)
    assert outcome.reason == "permanent"
    assert outcome.carry == Carry(2, frozenset({1}), frozenset({0}))
    assert api.calls.count("a") == 1
    assert [r.workflow_id for r in sink.emitted] == ["b"]


@pytest.mark.parametrize("status", [401, 403])
async def test_auth_failure_stops_calls_and_rejects_credentials(status: int) -> None:
    """401/403: CredentialsRejected, and no further workflow is tried after the rejection."""
    api, sink = FakeApi(), Sink()
    api.script("a", [AuthError(status, "bad key")])
    outcome = await handle(event("a", "b", "c"), api, sink, policy=POLICY, parallel=1)
    assert isinstance(outcome, CredentialsRejected)
    assert api.calls == ["a"]
    assert outcome.carry.done == frozenset()  # b and c are handed on, not lost


async def test_one_permanent_failure_does_not_stop_the_others_retrying() -> None:
    """A 422 on one workflow and a 503 on another: the 503 is retried through the broker and the
    422 is carried as failed, not dead-lettered with the rest."""
    api, sink = FakeApi(), Sink()
    api.script("a", [RejectedError(422, "no")])
    api.script("b", [ServerError(503, "busy")] * 3)
    outcome = await handle(event("a", "b", "c"), api, sink, policy=POLICY)
    assert isinstance(outcome, RetryLater)
    assert (outcome.carry.done, outcome.carry.failed) == ({2}, {0})
    retried = await handle(
        event("a", "b", "c"),
        api,
        sink,
        policy=POLICY,
        attempt=2,
        done=outcome.carry.done,
        failed=outcome.carry.failed,
    )
    assert isinstance(retried, DeadLetter)
    assert (retried.reason, retried.carry) == ("permanent", Carry(3, frozenset({1, 2}), frozenset({0})))
    assert api.calls.count("a") == 1
    assert sorted(r.workflow_id for r in sink.emitted) == ["b", "c"]


async def test_no_call_starts_after_the_deadline() -> None:
    """Past `start_by` nothing is called: the rest is handed on with what is done."""
    api, now = FakeApi(), [0.0]

    async def emit_then_time_passes(_result: CancelResult) -> None:
        now[0] = 10.0

    outcome = await handle(
        event("a", "b", "c"),
        api,
        Announcing(emit_then_time_passes),
        policy=POLICY,
        parallel=1,
        start_by=5.0,
        clock=lambda: now[0],
    )
    assert isinstance(outcome, HandOff)
    assert outcome.reason == "hold_limit"
    assert outcome.carry.done == {0}
    assert api.calls == ["a"]


async def test_a_call_that_cannot_start_in_time_is_handed_on() -> None:
    """The API port's `NotStarted` leaves the workflow for the continuation; it is not a failure."""
    api, sink = FakeApi(), Sink()
    api.script("b", [NotStarted("pacer")])
    outcome = await handle(event("a", "b"), api, sink, policy=POLICY, parallel=1)
    assert isinstance(outcome, HandOff)
    assert (outcome.carry.done, outcome.carry.failed) == ({0}, frozenset())


class Grants:
    """An admission that grants a fixed number per take, and counts what is given back."""

    def __init__(self, *grants: int) -> None:
        self.grants = list(grants)
        self.given = 0

    async def take(self, want: int, start_by: float) -> int:
        return min(want, self.grants.pop(0)) if self.grants else 0

    def give(self, count: int) -> None:
        self.given += count


async def test_admission_decides_how_many_start() -> None:
    """Only what admission grants starts; the rest is handed on, and every grant is given back."""
    api, sink = FakeApi(), Sink()
    admission = Grants(2, 1)
    outcome = await handle(event("a", "b", "c", "d", "e"), api, sink, policy=POLICY, admission=admission)
    assert isinstance(outcome, HandOff)
    assert outcome.carry.done == {0, 1, 2}
    assert api.calls == ["a", "b", "c"]
    assert admission.given == 3


def test_a_copy_back_before_its_time_is_parked_again() -> None:
    """`not_due`: early by more than 100 ms, parked for the rest; otherwise it runs."""
    carry = Carry(1)
    parked = not_due(10_000, 4_000, carry)
    assert isinstance(parked, HandOff)
    assert (parked.reason, parked.delay_s) == ("not_due", 6.0)
    assert not_due(10_000, 9_950, carry) is None


def test_an_internal_error_retries_then_dead_letters_the_unsettled() -> None:
    """A bug is retried through the broker, then dead-lettered naming what was not settled."""
    carry = Carry(3, frozenset({1}))
    retry = internal_error(KeyError("x"), POLICY, 1, carry)
    assert isinstance(retry, RetryLater)
    assert retry.carry == carry
    last = internal_error(KeyError("x"), POLICY, 3, carry)
    assert isinstance(last, DeadLetter)
    assert (last.reason, last.carry) == ("exhausted", Carry(3, frozenset({1}), frozenset({0, 2})))


async def test_refused_publish_is_transient() -> None:
    """An outbound event the broker cannot route makes the workflow retry later, not done."""
    api = FakeApi()

    async def refuse(_result: CancelResult) -> None:
        raise PublishRefused("unroutable", "unroutable")

    outcome = await handle(event("a"), api, Announcing(refuse), policy=POLICY)
    assert isinstance(outcome, RetryLater)
    assert outcome.carry.done == frozenset()


def test_policy_backoff_hook() -> None:
    """The predicate: transient errors retry, Retry-After is honoured up to its cap, the rest do not."""
    policy = RetryPolicy(broker_delays_s=(), max_retry_after_wait_s=10)
    assert policy.backoff_hook(ServerError(503, "")) is True
    assert policy.backoff_hook(TransportError("")) is True
    assert policy.backoff_hook(RateLimitedError(429, "", 4.0)) == 4.0
    assert policy.backoff_hook(RateLimitedError(429, "", 11.0)) is False
    assert policy.backoff_hook(RateLimitedError(429, "", None)) is True
    assert policy.backoff_hook(RejectedError(422, "")) is False
    assert policy.backoff_hook(AuthError(401, "")) is False
    assert policy.backoff_hook(ValueError()) is False


def test_broker_delay_follows_the_configured_list() -> None:
    """Attempt n waits delays[n-1] (at least Retry-After); past the list, None (exhausted)."""
    policy = RetryPolicy(broker_delays_s=(1.0, 5.0))
    assert policy.broker_delay(1, None) == 1.0
    assert policy.broker_delay(2, 7.0) == 7.0
    assert policy.broker_delay(3, None) is None
    assert RetryPolicy(broker_delays_s=()).broker_delay(1, None) is None
