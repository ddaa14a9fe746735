"""Capacity end to end: the concurrency bound, pacing against a rate limit, the complaint lane, the cache."""

from __future__ import annotations

from typing import Any

import pytest

from tests.support import BrokerProbe, campaign, complaint, wait_until, wf_ids

pytestmark = [pytest.mark.broker, pytest.mark.timeout(90)]


async def test_concurrency_limit_is_never_exceeded(
    simulator: Any, broker: BrokerProbe, start_worker: Any
) -> None:
    """With CANCELLER_CONCURRENCY=4 the simulator never sees more than 4 requests at once, and does see 4."""
    sim, _ = simulator
    sim.config.latency_s = 0.05
    await start_worker(concurrency=4)
    ids, urgent = wf_ids(40), wf_ids(8, "urgent")
    await broker.publish(campaign(ids[:20]))
    await broker.publish(campaign(ids[20:]))
    await broker.publish(complaint(urgent))
    await wait_until(lambda: broker.output_ids() == {*ids, *urgent}, timeout_s=20)
    assert sim.max_inflight == 4


async def _share_429(sim: Any) -> float:
    """The share of calls answered 429."""
    return sim.status_counts.get(429, 0) / max(1, sim.call_count)


@pytest.mark.parametrize("replicas", [1, 2])
async def test_pacing_keeps_429s_rare(
    simulator: Any, broker: BrokerProbe, start_worker: Any, replicas: int
) -> None:
    """Against a 20-per-second limit, one or two workers sharing the key get (almost) no 429s."""
    sim, _ = simulator
    sim.config.rate_limit = 20
    sim.config.rate_window_s = 1.0
    for _ in range(replicas):
        await start_worker(concurrency=8)
    ids = wf_ids(90)
    for start in range(0, len(ids), 10):
        await broker.publish(campaign(ids[start : start + 10]))
    await wait_until(lambda: broker.output_ids() == set(ids), timeout_s=30, what="all cancelled")
    assert await _share_429(sim) <= 0.05


async def test_complaint_overtakes_a_campaign_backlog(
    simulator: Any, broker: BrokerProbe, start_worker: Any
) -> None:
    """While a campaign drains at the rate limit, a complaint's call goes ahead of the backlog."""
    sim, _ = simulator
    sim.config.rate_limit = 10
    sim.config.rate_window_s = 1.0
    await start_worker(concurrency=8)
    backlog = wf_ids(120)
    for start in range(0, len(backlog), 20):
        await broker.publish(campaign(backlog[start : start + 20]))
    await wait_until(lambda: sim.call_count >= 10, what="the campaign draining")

    urgent = wf_ids(1, "urgent")[0]
    calls_before = sim.call_count
    await broker.publish(complaint([urgent]))
    await wait_until(lambda: bool(sim.calls_for(urgent)), timeout_s=10, what="the complaint's call")
    (call,) = sim.calls_for(urgent)
    campaign_calls_in_between = sum(1 for c in sim.calls if c.started_at < call.started_at) - calls_before
    assert campaign_calls_in_between <= 5
    assert call.status == 200
    remaining = [wf for wf in backlog if not sim.calls_for(wf)]
    assert len(remaining) >= 60  # the backlog was far from drained: the complaint did not wait for it
    await wait_until(lambda: urgent in broker.output_ids())


async def test_terminal_cache_skips_the_second_call(
    simulator: Any, broker: BrokerProbe, start_worker: Any
) -> None:
    """An overlapping event names a workflow just cancelled: its outcome is published without a call."""
    sim, _ = simulator
    worker = await start_worker()
    wf, other = wf_ids(2)
    await broker.publish(campaign([wf]))
    await wait_until(lambda: len(broker.outputs) == 1)
    await broker.publish(complaint([wf, other]))
    await wait_until(lambda: len(broker.outputs) == 3)
    assert len(sim.calls_for(wf)) == 1
    second = [o for o in broker.outputs_for(wf) if o["data"]["trigger"]["event_type"] == "complaint-received"]
    assert second[0]["data"]["outcome"] == "already_terminal"
    assert second[0]["data"]["status"] == "cancelled"
    assert worker.metric("canceller_terminal_cache_hits_total", lane="complaint") == 1


async def test_lane_metrics_are_exported(simulator: Any, broker: BrokerProbe, start_worker: Any) -> None:
    """Limiter waits, pace and remaining budget are observed per answer."""
    sim, _ = simulator
    sim.config.rate_limit = 50
    sim.config.rate_window_s = 5.0
    worker = await start_worker()
    await broker.publish(complaint(wf_ids(3)))
    await wait_until(lambda: len(broker.outputs) == 3)
    assert worker.metric("canceller_limiter_wait_seconds_count", lane="complaint") == 3
    assert 0 < worker.metric("canceller_dialnexa_rate_limit_remaining") <= 47
    assert worker.metric("canceller_dialnexa_pace_rps") > 0
    assert worker.metric("canceller_inflight_requests", lane="complaint") == 0


async def test_inflight_gauges_follow_the_work(
    simulator: Any, broker: BrokerProbe, start_worker: Any
) -> None:
    """While one event's call is held, one event and one campaign request are in flight; then none."""
    sim, _ = simulator
    sim.config.latency_s = 1.0
    worker = await start_worker()
    await broker.publish(campaign(wf_ids(1)))
    await wait_until(lambda: sim.inflight == 1, what="a call in flight")
    assert worker.metric("canceller_inflight_events") == 1
    assert worker.metric("canceller_inflight_requests", lane="campaign") == 1
    await wait_until(lambda: len(broker.outputs) == 1, what="the output")
    await wait_until(lambda: worker.metric("canceller_inflight_events") == 0, what="the event settled")
    assert worker.metric("canceller_inflight_requests", lane="campaign") == 0
