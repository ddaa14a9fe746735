"""The pure core, table-driven against a fake API: which outcome each combination of answers gives."""

from __future__ import annotations

import pytest
import stamina

from service.dialnexa import (
    AuthError,
    CancelResult,
    RateLimitedError,
    RejectedError,
    ServerError,
    TransportError,
)
from service.events import CampaignEnded
from service.handler import (
    Completed,
    CredentialsRejected,
    DeadLetter,
    PublishRefused,
    RetryLater,
    RetryPolicy,
    handle,
)
from tests.fakes import FakeApi, Sink
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
    assert outcome.done == {0, 2}
    assert outcome.total == 3
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


async def test_refused_publish_is_transient() -> None:
    """An outbound event the broker cannot route makes the workflow retry later, not done."""
    api = FakeApi()

    async def refuse(_result: CancelResult) -> None:
        raise PublishRefused("unroutable")

    outcome = await handle(event("a"), api, refuse, policy=POLICY)
    assert isinstance(outcome, RetryLater)
    assert outcome.done == frozenset()


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
