"""The hold limit against the broker's own consumer timeout.

RabbitMQ closes the channel of a consumer that holds a delivery unacked past `consumer_timeout`,
and every message on it comes back. Here the broker's timeout is set to 20 s and a rate-limited
backlog needs several times that: the worker hands unfinished work on to continuation copies
well before the timeout, so no channel is closed, every workflow is called once, nothing is
dead-lettered, and complaints published during the drain are acted on within seconds.
"""

from __future__ import annotations

import asyncio
import re
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from tests.support import BrokerProbe, campaign, complaint, wait_until, wf_ids

CONSUMER_TIMEOUT_MS = 20_000

pytestmark = [pytest.mark.broker, pytest.mark.timeout(300)]


def _eval(expression: str) -> str:
    """Evaluate an Erlang expression on the local broker node."""
    done = subprocess.run(
        ["rabbitmqctl", "eval", expression], capture_output=True, text=True, check=True, timeout=60
    )
    return done.stdout.strip()


@pytest.fixture
def short_consumer_timeout() -> Iterator[float]:
    """The broker's consumer_timeout at 20 s for channels opened meanwhile; restored afterwards.

    RabbitMQ 3.10 reads it when a channel opens and checks it on the channel's 60 s tick."""
    before = _eval("application:get_env(rabbit, consumer_timeout).")
    _eval(f"application:set_env(rabbit, consumer_timeout, {CONSUMER_TIMEOUT_MS}).")
    try:
        yield CONSUMER_TIMEOUT_MS / 1000
    finally:
        kept = re.fullmatch(r"\{ok,(\d+)\}", before)
        if kept:
            _eval(f"application:set_env(rabbit, consumer_timeout, {kept[1]}).")
        else:
            _eval("application:unset_env(rabbit, consumer_timeout).")


@pytest.mark.rabbitmqctl
@pytest.mark.skipif(not shutil.which("rabbitmqctl"), reason="sets the broker's consumer_timeout")
async def test_a_backlog_longer_than_the_consumer_timeout_drains_with_no_channel_closed(
    simulator: Any, broker: BrokerProbe, start_worker: Any, short_consumer_timeout: float
) -> None:
    """350 workflows at 6 calls/s (over 60 s, three consumer timeouts): no reconnect, no delivery
    held past CANCELLER_MAX_HOLD_S, one successful call per workflow and no 409, an empty DLQ,
    every complaint settled within 2 s while the campaign drains."""
    sim, _ = simulator
    sim.config.rate_limit = 6
    sim.config.rate_window_s = 1.0
    worker = await start_worker(
        concurrency=4,
        max_hold_s=14,
        http_connect_timeout_s=1,
        http_read_timeout_s=2,
        publish_timeout_s=2,
    )
    await broker.watch_dlq()
    backlog = wf_ids(350)
    started = time.monotonic()
    for first in range(0, len(backlog), 50):
        await broker.publish(campaign(backlog[first : first + 50]))

    latencies: list[float] = []

    async def complaints() -> None:
        for round_ in range(5):
            await wait_until(
                lambda r=round_: time.monotonic() - started >= 5 + 10 * r, timeout_s=120, what="next round"
            )
            urgent = f"urgent_{uuid.uuid4().hex[:8]}"
            sent = time.monotonic()
            await broker.publish(complaint([urgent]))
            await wait_until(lambda u=urgent: u in broker.output_ids(), timeout_s=10, what="complaint")
            latencies.append(time.monotonic() - sent)

    complaining = asyncio.create_task(complaints())
    await wait_until(lambda: set(backlog) <= broker.output_ids(), timeout_s=240, what="backlog drained")
    await complaining
    drained_s = time.monotonic() - started

    assert drained_s > 3 * short_consumer_timeout  # the backlog really outlasted the broker's timeout
    assert worker.metric("canceller_broker_reconnects_total") == 0  # no channel was closed
    assert 0 < worker.metric("canceller_delivery_hold_max_seconds") <= worker.settings.max_hold_s
    assert worker.metric("canceller_handed_off_total", event_type="campaign-ended", reason="hold_limit") > 0
    successes = {wf: [c for c in sim.calls_for(wf) if c.status == 200] for wf in backlog}
    assert {wf: len(calls) for wf, calls in successes.items() if len(calls) != 1} == {}
    assert sim.status_counts.get(409, 0) == 0  # nothing was called again after it was cancelled
    assert len(broker.outputs) == len(backlog) + len(latencies)
    assert await broker.depth(worker.settings.dead_letter_queue) == 0 and broker.dead == []
    assert len(latencies) == 5 and max(latencies) < 2.0, latencies


async def test_shutdown_hands_unfinished_work_on_instead_of_redoing_it(
    simulator: Any, broker: BrokerProbe, start_worker: Any
) -> None:
    """SIGTERM's drain mid-campaign: the delivery hands what is left to a continuation at once (no
    waiting out the drain time); the next worker finishes it and calls no workflow twice."""
    sim, _ = simulator
    sim.config.rate_limit = 10
    sim.config.rate_window_s = 1.0
    first = await start_worker(concurrency=4, drain_timeout_s=20)
    ids = wf_ids(60)
    await broker.publish(campaign(ids))
    await wait_until(lambda: len(broker.outputs) >= 5, what="the campaign under way")
    stopping = time.monotonic()
    await first.stop()
    assert time.monotonic() - stopping < 5  # handed on, not drained for 20 s
    assert worker_handed_off(first) == 1
    assert len(broker.output_ids()) < len(ids)

    await start_worker(concurrency=4)
    await wait_until(lambda: broker.output_ids() == set(ids), timeout_s=30, what="finished by the next")
    assert sim.status_counts.get(409, 0) == 0
    assert all(len([c for c in sim.calls_for(wf) if c.status == 200]) == 1 for wf in ids)


def worker_handed_off(worker: Any) -> float:
    """Hand-offs a worker counted for campaign-ended events (any reason)."""
    return worker.metric("canceller_handed_off_total", event_type="campaign-ended", reason="hold_limit")
