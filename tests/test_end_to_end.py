"""End to end, in process: a real RabbitMQ, the simulator over real HTTP, the real worker."""

from __future__ import annotations

import json
import shutil
import subprocess
import uuid
from typing import Any

import httpx
import pytest

from service.core.events import cancelled_event_id
from tests.support import BrokerProbe, campaign, complaint, wait_until, wf_ids

pytestmark = [pytest.mark.broker, pytest.mark.timeout(60)]


def _header(message: Any, name: str) -> Any:
    value = (message.headers or {}).get(name)
    return value.decode() if isinstance(value, bytes) else value


async def test_campaign_happy_path(simulator: Any, broker: BrokerProbe, start_worker: Any) -> None:
    """A campaign-ended event cancels every workflow, publishes one event each, and is acked."""
    sim, _ = simulator
    worker = await start_worker()
    ids = wf_ids(3)
    event = campaign(ids)
    await broker.publish(event)

    await wait_until(lambda: broker.output_ids() == set(ids), what="three workflow-cancelled events")
    for out in broker.outputs:
        assert out["type"] == "workflow-cancelled"
        assert out["source"] == "urn:workflow-canceller"
        assert out["id"] == cancelled_event_id(out["subject"], event["id"])
        assert out["data"]["outcome"] == "cancelled"
        assert out["data"]["status"] == "cancelled"
        assert out["data"]["trigger"] == {
            "event_id": event["id"],
            "event_type": "campaign-ended",
            "campaign_id": "cmp_1",
        }
    assert all(sim.workflows[i] == "cancelled" for i in ids)
    assert {(ct, mode) for ct, mode, _ in broker.output_properties} == {("application/cloudevents+json", 2)}
    assert {mid for _, _, mid in broker.output_properties} == {o["id"] for o in broker.outputs}
    await wait_until(
        lambda: (
            worker.metric("canceller_events_processed_total", event_type="campaign-ended", result="acked")
            == 1
        )
    )
    assert await broker.depth(worker.settings.campaign_queue) == 0
    assert (
        worker.metric(
            "canceller_workflow_cancellations_total", event_type="campaign-ended", outcome="cancelled"
        )
        == 3
    )
    assert worker.metric("canceller_events_published_total", event_type="workflow-cancelled") == 3


async def test_complaint_happy_path(simulator: Any, broker: BrokerProbe, start_worker: Any) -> None:
    """A complaint-received event is consumed from its own queue and cancels its workflows."""
    worker = await start_worker()
    ids = wf_ids(2)
    event = complaint(ids)
    await broker.publish(event)
    await wait_until(lambda: broker.output_ids() == set(ids), what="two events")
    trigger = broker.outputs[0]["data"]["trigger"]
    assert trigger["complaint_id"] == "cpl_1" and trigger["event_type"] == "complaint-received"
    await wait_until(
        lambda: worker.metric("canceller_event_age_seconds_count", event_type="complaint-received") == 1
    )


async def test_409_is_success_and_404_is_final(
    simulator: Any, broker: BrokerProbe, start_worker: Any
) -> None:
    """409 publishes outcome already_terminal; 404 publishes nothing; the message is acked once."""
    sim, _ = simulator
    worker = await start_worker()
    done_id, missing_id, fresh_id = wf_ids(1, "done")[0], wf_ids(1, "missing")[0], wf_ids(1)[0]
    sim.set_status(done_id, "completed")
    await broker.publish(campaign([done_id, missing_id, fresh_id]))

    await wait_until(
        lambda: (
            worker.metric("canceller_events_processed_total", event_type="campaign-ended", result="acked")
            == 1
        )
    )
    assert broker.output_ids() == {done_id, fresh_id}
    assert broker.outputs_for(done_id)[0]["data"]["outcome"] == "already_terminal"
    assert (
        worker.metric(
            "canceller_workflow_cancellations_total", event_type="campaign-ended", outcome="not_found"
        )
        == 1
    )
    assert len(sim.calls_for(missing_id)) == 1
    assert len(sim.calls_for(done_id)) == 1


async def test_transient_error_retried_in_process(
    simulator: Any, broker: BrokerProbe, start_worker: Any
) -> None:
    """A 503 then success is retried in process: one output, acked on the first delivery."""
    sim, _ = simulator
    worker = await start_worker()
    wf = wf_ids(1)[0]
    sim.script(wf, [503])
    await broker.publish(campaign([wf]))
    await wait_until(lambda: broker.output_ids() == {wf})
    assert [c.status for c in sim.calls_for(wf)] == [503, 200]
    assert worker.metric("canceller_dialnexa_retries_total", reason="ServerError") == 1
    assert (
        worker.metric("canceller_events_processed_total", event_type="campaign-ended", result="retried") == 0
    )


async def test_retry_after_is_respected(simulator: Any, broker: BrokerProbe, start_worker: Any) -> None:
    """After a 429 with Retry-After: 1, the next call comes no sooner than one second later."""
    sim, _ = simulator
    await start_worker()
    wf = wf_ids(1)[0]
    sim.script(wf, [{"status": 429, "retry_after": 1}])
    await broker.publish(campaign([wf]))
    await wait_until(lambda: broker.output_ids() == {wf})
    first, second = sim.calls_for(wf)
    assert first.status == 429 and second.status == 200
    assert second.started_at - first.finished_at >= 0.95


async def test_partial_failure_retries_only_what_failed(
    simulator: Any, broker: BrokerProbe, start_worker: Any
) -> None:
    """Through a broker retry, workflows confirmed on the first attempt are not called again."""
    sim, _ = simulator
    worker = await start_worker()
    ok_ids = wf_ids(3)
    flaky = wf_ids(1, "flaky")[0]
    sim.script(flaky, [503, 502])  # both in-process attempts fail: the message goes to a delay queue
    await broker.publish(campaign([*ok_ids, flaky]))

    await wait_until(lambda: broker.output_ids() == {*ok_ids, flaky}, what="all four outputs")
    await wait_until(
        lambda: (
            worker.metric("canceller_events_processed_total", event_type="campaign-ended", result="acked")
            == 1
        )
    )
    assert (
        worker.metric("canceller_events_processed_total", event_type="campaign-ended", result="retried") == 1
    )
    assert all(len(sim.calls_for(i)) == 1 for i in ok_ids)
    assert [c.status for c in sim.calls_for(flaky)] == [503, 502, 200]
    assert len(broker.outputs) == 4


async def test_exhausted_retries_go_to_dlq(simulator: Any, broker: BrokerProbe, start_worker: Any) -> None:
    """A workflow that keeps failing sends the message to the DLQ with reason exhausted, body intact."""
    sim, _ = simulator
    worker = await start_worker()
    await broker.watch_dlq()
    wf = wf_ids(1)[0]
    sim.script(wf, [503] * 6)  # 2 delays -> 3 deliveries x 2 in-process attempts
    event = campaign([wf])
    await broker.publish(event)

    await wait_until(lambda: len(broker.dead) == 1, what="one dead letter")
    dead = broker.dead[0]
    assert json.loads(dead.body) == event
    assert _header(dead, "x-canceller-reason") == "exhausted"
    assert _header(dead, "x-canceller-attempts") == 3
    assert "503" in _header(dead, "x-canceller-error")
    assert "canceller-return-queue" not in (dead.headers or {})  # a replay from the DLQ starts afresh
    assert len(sim.calls_for(wf)) == 6
    assert broker.outputs == []
    assert (
        worker.metric("canceller_events_processed_total", event_type="campaign-ended", result="dead_lettered")
        == 1
    )
    assert (
        worker.metric("canceller_workflow_cancellations_total", event_type="campaign-ended", outcome="failed")
        == 1
    )


async def test_permanent_error_goes_to_dlq(simulator: Any, broker: BrokerProbe, start_worker: Any) -> None:
    """A 422 is permanent: no retry, DLQ with reason permanent, the other workflows still cancelled."""
    sim, _ = simulator
    await start_worker()
    await broker.watch_dlq()
    bad, good = wf_ids(1, "bad")[0], wf_ids(1)[0]
    sim.script(bad, [422])
    await broker.publish(campaign([bad, good]))
    await wait_until(lambda: len(broker.dead) == 1)
    assert _header(broker.dead[0], "x-canceller-reason") == "permanent"
    assert _header(broker.dead[0], "x-canceller-attempts") == 1
    assert len(sim.calls_for(bad)) == 1
    assert broker.output_ids() == {good}


POISON: list[tuple[str, bytes, str | None, str]] = [
    ("not json", b"{not json", "application/json", "not JSON"),
    ("not utf-8", b'{"a": "\xff\xfe"}', "application/json", "not UTF-8"),
    ("not an object", b"[1, 2]", None, "not a JSON object"),
    ("wrong content type", json.dumps(campaign(["wf_1"])).encode(), "text/plain", "content type"),
    (
        "unknown type",
        json.dumps({**campaign(["wf_1"]), "type": "lead-created"}).encode(),
        None,
        "unknown event type",
    ),
    (
        "missing data",
        json.dumps({k: v for k, v in campaign(["wf_1"]).items() if k != "data"}).encode(),
        None,
        "data",
    ),
    ("bad workflow id", json.dumps(campaign(["../admin"])).encode(), None, "workflow_ids"),
    ("too many ids", json.dumps(campaign([f"wf_{n}" for n in range(1001)])).encode(), None, "workflow_ids"),
    ("empty ids", json.dumps(campaign([])).encode(), None, "workflow_ids"),
    (
        "bad specversion",
        json.dumps({**campaign(["wf_1"]), "specversion": "0.3"}).encode(),
        None,
        "specversion",
    ),
    ("oversize", b'{"pad": "' + b"x" * 40_000 + b'"}', None, "limit"),
]


async def test_poison_messages_go_to_dlq_without_api_calls(
    simulator: Any, broker: BrokerProbe, start_worker: Any
) -> None:
    """Every kind of invalid input is dead-lettered with reason invalid and never reaches DialNexa."""
    sim, _ = simulator
    worker = await start_worker(max_body_bytes=32_768)
    await broker.watch_dlq()
    for _name, body, content_type, _ in POISON:
        await broker.publish(body, routing_key="campaign-ended", content_type=content_type)

    await wait_until(lambda: len(broker.dead) == len(POISON), what="every poison message dead-lettered")
    by_body = {m.body: m for m in broker.dead}
    for name, body, _, expected in POISON:
        dead = by_body[body]
        assert _header(dead, "x-canceller-reason") == "invalid", name
        assert expected in _header(dead, "x-canceller-error"), (name, _header(dead, "x-canceller-error"))
    assert sim.call_count == 0
    assert await worker.ready()
    assert worker.metric("canceller_dead_lettered_total", reason="invalid") == len(POISON)


async def test_unroutable_output_is_not_acked_as_success(
    simulator: Any, amqp_url: str, names: dict[str, str], start_worker: Any
) -> None:
    """With no queue bound to the output exchange, the event is retried then dead-lettered, not lost."""
    probe = BrokerProbe(amqp_url, names)
    await probe.open(bind_outputs=False)
    try:
        worker = await start_worker()
        await probe.watch_dlq()
        await probe.publish(campaign(wf_ids(1)))
        await wait_until(lambda: len(probe.dead) == 1, what="dead letter after unroutable publishes")
        assert _header(probe.dead[0], "x-canceller-reason") == "exhausted"
        assert "unroutable" in _header(probe.dead[0], "x-canceller-error")
        assert (
            worker.metric("canceller_events_processed_total", event_type="campaign-ended", result="acked")
            == 0
        )
    finally:
        await probe.close()


async def test_credentials_rejected_pauses_then_resumes(
    simulator: Any, broker: BrokerProbe, start_worker: Any
) -> None:
    """On 401 the worker stops consuming, keeps the messages, reports not ready, and resumes once fixed."""
    sim, _ = simulator
    worker = await start_worker()
    await broker.watch_dlq()
    sim.config.api_key = "sim_key:rotated"  # our key is now wrong
    ids = wf_ids(5)
    for wf in ids:
        await broker.publish(campaign([wf]))

    await wait_until(lambda: worker.metric("canceller_dialnexa_credentials_valid") == 0, what="paused")
    assert not await worker.ready()
    async with httpx.AsyncClient() as client:
        answer = await client.get(f"http://127.0.0.1:{worker.settings.http_port}/readyz")
        assert answer.status_code == 503
        assert answer.json()["paused"]
    await wait_until(lambda: _probe_calls(sim) >= 2, what="probes with backoff")
    await wait_until(lambda: broker.depth(worker.settings.campaign_queue), what="messages back in the queue")
    assert broker.outputs == []

    sim.config.api_key = "sim_key:sim_secret"  # the key works again
    await wait_until(lambda: broker.output_ids() == set(ids), timeout_s=15, what="all processed after fix")
    assert await worker.ready()
    assert broker.dead == []
    assert worker.metric("canceller_dialnexa_credentials_valid") == 1


def _probe_calls(sim: Any, probe_id: str = "wf_canceller_auth_probe") -> int:
    return sum(1 for c in sim.calls if c.workflow_id == probe_id)


async def test_duplicate_delivery_publishes_same_event_id(
    simulator: Any, broker: BrokerProbe, start_worker: Any
) -> None:
    """A redelivered trigger yields the same workflow-cancelled id (already_terminal the second time)."""
    await start_worker()
    wf = wf_ids(1)[0]
    event = campaign([wf], event_id=f"evt_{uuid.uuid4().hex}")
    await broker.publish(event)
    await wait_until(lambda: len(broker.outputs) == 1)
    await broker.publish(event)
    await wait_until(lambda: len(broker.outputs) == 2)
    first, second = broker.outputs
    assert first["id"] == second["id"]
    assert [first["data"]["outcome"], second["data"]["outcome"]] == ["cancelled", "already_terminal"]


@pytest.mark.rabbitmqctl
async def test_broker_connections_closed_mid_stream(
    simulator: Any,
    broker: BrokerProbe,
    start_worker: Any,
    vhost: str | None,
    amqp_url: str,
    names: dict[str, str],
) -> None:
    """`rabbitmqctl close_all_connections` mid-stream: the worker reconnects and every event completes."""
    if vhost is None or not shutil.which("rabbitmqctl"):
        pytest.skip("needs rabbitmqctl and a vhost of this session's own")
    sim, _ = simulator
    sim.config.latency_s = 0.05
    worker = await start_worker()
    ids = wf_ids(60)
    for wf in ids:
        await broker.publish(campaign([wf]))
    await wait_until(lambda: len(broker.output_ids()) >= 5, what="some progress before the cut")

    subprocess.run(
        ["rabbitmqctl", "-q", "close_all_connections", "-p", vhost, "test: connection cut"],
        check=True,
        capture_output=True,
        timeout=60,
    )
    await wait_until(lambda: worker.metric("canceller_broker_reconnects_total") >= 1, what="reconnect")
    await broker.close(delete=False)  # the probe was cut off too: reconnect it to the same queues
    await broker.open()
    await wait_until(worker.ready, timeout_s=15, what="ready again")
    await wait_until(
        lambda: broker.output_ids() == set(ids), timeout_s=30, what="every workflow-cancelled event"
    )
    assert all(sim.workflows[wf] == "cancelled" for wf in ids)
    assert await broker.depth(worker.settings.campaign_queue) == 0
    assert worker.metric("canceller_dead_lettered_total", reason="exhausted") == 0


async def test_stop_while_paused_returns_and_keeps_the_message(
    simulator: Any, broker: BrokerProbe, start_worker: Any
) -> None:
    """A stop during a credentials pause ends the worker promptly; the message stays in its queue."""
    sim, _ = simulator
    worker = await start_worker()
    sim.config.api_key = "sim_key:rotated"
    await broker.publish(campaign(wf_ids(1)))
    await wait_until(lambda: worker.metric("canceller_dialnexa_credentials_valid") == 0, what="paused")
    await worker.stop()
    assert worker.task is not None and worker.task.done() and worker.task.exception() is None
    await wait_until(lambda: broker.has_depth(worker.settings.campaign_queue, 1), what="message kept")
    assert broker.outputs == []
