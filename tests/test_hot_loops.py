"""No hot loops and no unbounded waits, end to end against the real broker and the simulator:
a key that may read but not cancel, a Retry-After no one should believe, a wait longer than the
longest delay queue, a copy the broker refuses, a header that is not UTF-8, an event time of year 1."""

from __future__ import annotations

import itertools
import json
import time
from typing import Any

import aio_pika
import httpx
import pytest

from tests.conftest import API_KEY
from tests.support import BrokerProbe, campaign, wait_until, wf_ids

pytestmark = [pytest.mark.broker, pytest.mark.timeout(90)]


class RawText(str):
    """A header text whose bytes on the wire are given as they are (here: not UTF-8), as another
    client could send them; the broker passes them on and the worker reads them back as bytes."""

    raw: bytes

    def __new__(cls, raw: bytes) -> RawText:
        text = super().__new__(cls, raw.decode("latin-1"))
        text.raw = raw
        return text

    def encode(self, encoding: str = "utf-8", errors: str = "strict") -> bytes:
        return self.raw


def _probe_calls(sim: Any, worker: Any) -> int:
    return len(sim.calls_for(worker.settings.auth_probe_workflow_id))


async def test_a_key_that_may_read_but_not_cancel_stays_paused_and_loses_nothing(
    simulator: Any, broker: BrokerProbe, start_worker: Any
) -> None:
    """403 on cancel with reads allowed: the worker pauses and stays paused (the probe is a cancel),
    probes with a growing delay, calls no real workflow in a loop, dead-letters nothing, and
    finishes everything once the key may cancel again."""
    sim, _ = simulator
    worker = await start_worker(auth_probe_initial_s=0.1, auth_probe_max_s=0.8)
    await broker.watch_dlq()
    sim.config.api_key = "sim_key:another"
    sim.config.read_only_key = API_KEY  # our key may read, not cancel
    ids = wf_ids(3)
    for wf in ids:
        await broker.publish(campaign([wf]))
    await wait_until(lambda: _probe_calls(sim, worker) >= 4, timeout_s=15, what="four probes")
    probes = sim.calls_for(worker.settings.auth_probe_workflow_id)
    assert [call.status for call in probes] == [403] * len(probes)
    gaps = [later.started_at - earlier.started_at for earlier, later in itertools.pairwise(probes)]
    assert gaps[-1] > gaps[0]  # the probe backs off
    assert worker.metric("canceller_dialnexa_credentials_valid") == 0
    real_calls = sum(len(sim.calls_for(wf)) for wf in ids)
    assert real_calls <= 2 * len(ids)  # no loop of cancels while paused
    await wait_until(lambda: broker.has_depth(worker.settings.campaign_queue, 3), what="messages kept")
    assert broker.dead == []

    sim.config.api_key, sim.config.read_only_key = API_KEY, None
    await wait_until(lambda: broker.output_ids() == set(ids), timeout_s=20, what="done after the fix")
    assert broker.dead == []
    assert worker.metric("canceller_dialnexa_credentials_valid") == 1


async def test_an_absurd_retry_after_is_capped_visible_and_honoured_past_every_delay_queue(
    simulator: Any, broker: BrokerProbe, start_worker: Any
) -> None:
    """`Retry-After: 1000000000` is believed for CANCELLER_MAX_RATE_LIMIT_WAIT_S (3 s): readiness
    and the pause metric show it, and the message waits those 3 s through the broker although its
    longest delay queue holds 0.6 s, then completes."""
    sim, _ = simulator
    worker = await start_worker(max_rate_limit_wait_s=3, max_retry_after_wait_s=1)
    wf = wf_ids(1)[0]
    sim.script(wf, [{"status": 429, "retry_after": 1_000_000_000}])
    await broker.publish(campaign([wf]))
    await wait_until(lambda: len(sim.calls_for(wf)) == 1, what="the first call")
    pause = worker.metric("canceller_rate_limit_pause_seconds")
    assert 1 < pause <= 3
    async with httpx.AsyncClient() as client:
        answer = await client.get(f"http://127.0.0.1:{worker.settings.http_port}/readyz")
    assert answer.status_code == 503
    assert "rate limit" in answer.json()["paused"]
    await wait_until(lambda: wf in broker.output_ids(), timeout_s=15, what="cancelled after the wait")
    first, second = sim.calls_for(wf)
    assert 3.0 <= second.started_at - first.started_at < 8.0
    assert max(worker.settings.retry_delays) < 3.0
    assert await worker.ready()


async def test_a_refused_dead_letter_copy_backs_off_instead_of_spinning(
    simulator: Any, broker: BrokerProbe, start_worker: Any
) -> None:
    """With the DLQ gone, an invalid message's DLQ copy is unroutable: it is given back after a
    growing delay (1 s, 2 s, ...), not redelivered at broker speed, and the refusals are counted."""
    worker = await start_worker()
    await broker.channel.queue_delete(worker.settings.dead_letter_queue)
    started = time.monotonic()
    await broker.publish(b"not json", routing_key="campaign-ended", content_type="application/json")
    await wait_until(
        lambda: worker.metric("canceller_copies_refused_total", kind="DeadLetter") >= 2,
        timeout_s=10,
        what="two refusals",
    )
    elapsed = time.monotonic() - started
    assert elapsed >= 1.0  # the second try came after the first back-off
    assert worker.metric("canceller_events_received_total", event_type="unknown") <= 3
    assert await worker.ready()


async def test_a_retry_header_that_is_not_utf8_starts_afresh(
    simulator: Any, broker: BrokerProbe, start_worker: Any
) -> None:
    """A copy through the requeue exchange whose done-bitmap is not UTF-8 is read as no state:
    the workflow is cancelled and the message acked, not held unacked."""
    worker = await start_worker()
    wf = wf_ids(1)[0]
    requeue = await broker.channel.get_exchange(worker.settings.requeue_exchange)
    await requeue.publish(
        aio_pika.Message(
            json.dumps(campaign([wf])).encode(),
            content_type="application/cloudevents+json",
            headers={
                "canceller-return-queue": worker.settings.campaign_queue,
                "x-canceller-done": RawText(b"1:\xff\xfe"),
                "x-canceller-failed": RawText(b"\xc3\x28"),
                "x-canceller-attempts": RawText(b"\xff"),
                "x-canceller-not-before-ms": RawText(b"9\xff"),
            },
        ),
        routing_key="",
    )
    await wait_until(lambda: wf in broker.output_ids(), what="cancelled")
    await wait_until(lambda: worker.metric("canceller_inflight_events") == 0, what="settled")
    assert worker.metric("canceller_events_processed_total", event_type="campaign-ended", result="acked") == 1


async def test_an_event_from_year_one_is_summarised_and_aged(
    simulator: Any, broker: BrokerProbe, start_worker: Any
) -> None:
    """A `time` of year 1 (no offset) still gives the summary and an age observation."""
    worker = await start_worker()
    wf = wf_ids(1)[0]
    await broker.publish(campaign([wf]) | {"time": "0001-01-01T00:00:00"})
    await wait_until(lambda: wf in broker.output_ids(), what="cancelled")
    await wait_until(
        lambda: worker.metric("canceller_event_age_seconds_count", event_type="campaign-ended") == 1,
        what="the age observed",
    )
