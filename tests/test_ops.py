"""Operator commands against the real broker: `dlq list|replay|purge`, `publish`, `check`.

The commands run as real processes (`python -m service ...`) with the test's configuration in
their environment; the interrupted-replay test drives the same code in process so it can stop
exactly between the confirmed republish and the removal.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aio_pika
import pytest

from service.config import Settings
from service.ops import dlq
from service.ops.commands import duration_s
from service.ops.dlq import DeadLetters, Filter, Letter
from service.retry import HEADER_ATTEMPTS, HEADER_REASON, HEADER_REPLAYED_AT, HEADER_REPLAYS
from tests.support import BrokerProbe, campaign, complaint, wait_until, wf_ids

pytestmark = [pytest.mark.broker, pytest.mark.timeout(90)]

ROOT = Path(__file__).resolve().parent.parent
PHONE = "+15555550123"
Cli = Callable[..., Awaitable[subprocess.CompletedProcess[str]]]


def _env(settings: Settings) -> dict[str, str]:
    """The worker's settings as the `CANCELLER_*` environment a command process reads."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CANCELLER_")}
    for name in (
        "input_exchange",
        "campaign_queue",
        "complaint_queue",
        "output_exchange",
        "dead_letter_queue",
        "dead_letter_exchange",
        "requeue_exchange",
        "delay_queue_prefix",
    ):
        env[f"CANCELLER_{name.upper()}"] = str(getattr(settings, name))
    env["CANCELLER_AMQP_URL"] = settings.amqp_url.get_secret_value()
    env["CANCELLER_DIALNEXA_BASE_URL"] = str(settings.dialnexa_base_url)
    env["CANCELLER_DIALNEXA_API_KEY"] = settings.dialnexa_api_key.get_secret_value()
    env["CANCELLER_RETRY_DELAYS"] = ",".join(str(d) for d in settings.retry_delays)
    env["CANCELLER_PUBLISH_TIMEOUT_S"] = "5"
    env["PYTHONPATH"] = str(ROOT)  # this checkout's package, whatever the working directory
    return env


@pytest.fixture
def cli(make_settings: Any, tmp_path: Path) -> Cli:
    """Run `workflow-canceller <args>` as a process with the test's configuration."""

    async def run(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
        environment = {**_env(make_settings()), **env}
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "service",
            *args,
            cwd=tmp_path,  # no stray .env file
            env=environment,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        out, err = await asyncio.wait_for(process.communicate(), 60)
        assert process.returncode is not None
        return subprocess.CompletedProcess(args, process.returncode, out.decode(), err.decode())

    return run


async def _fill_dlq(simulator: Any, broker: BrokerProbe, start_worker: Any) -> Any:
    """Run a worker until the DLQ holds 2 invalid, 2 permanent and 1 exhausted message; stop it."""
    sim, _ = simulator
    worker = await start_worker()
    permanent_a, permanent_b, flaky = wf_ids(3, "wf_dl")
    sim.script(permanent_a, [422])
    sim.script(permanent_b, [422])
    sim.script(flaky, [503] * 6)  # 3 deliveries x 2 in-process attempts: exhausted
    await broker.publish(b"not json at all", routing_key="campaign-ended", content_type="application/json")
    await broker.publish(campaign(["bad id!"], event_id="ev-invalid-id"))
    await broker.publish(campaign([permanent_a], event_id="ev-permanent-campaign"))
    await broker.publish(complaint([permanent_b], event_id="ev-permanent-complaint", phone=PHONE))
    await broker.publish(campaign([flaky], event_id="ev-exhausted"))
    dead_letter_queue = worker.settings.dead_letter_queue
    await wait_until(lambda: broker.has_depth(dead_letter_queue, 5), timeout_s=30, what="five dead letters")
    await worker.stop()
    worker.permanent_ids = {permanent_a, permanent_b}
    return worker


async def test_list_counts_by_reason_and_type_and_never_prints_the_phone(
    simulator: Any, broker: BrokerProbe, start_worker: Any, cli: Cli
) -> None:
    """`dlq list` counts by reason and event type, shows the newest N, and leaves the DLQ as it was."""
    worker = await _fill_dlq(simulator, broker, start_worker)

    result = await cli("dlq", "list", "--json", "--limit", "3")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["count"] == 5
    assert report["by_reason"] == {"invalid": 2, "permanent": 2, "exhausted": 1}
    assert report["by_event_type"] == {"campaign-ended": 3, "complaint-received": 1, "unknown": 1}
    assert {"reason": "permanent", "event_type": "complaint-received", "count": 1} in report[
        "by_reason_and_event_type"
    ]
    newest = report["newest"]
    assert len(newest) == 3
    stamps = [entry["dead_lettered_at"] for entry in newest]
    assert stamps == sorted(stamps, reverse=True)
    assert newest[0]["event_id"] == "ev-exhausted"  # dead-lettered last, after its retries
    assert newest[0]["attempts"] == 3
    assert newest[0]["error"]
    assert all(entry["age_s"] is not None and entry["age_s"] < 60 for entry in newest)

    text = await cli("dlq", "list")
    assert text.returncode == 0
    assert "5 message(s)" in text.stdout
    assert "by reason:     invalid 2, permanent 2, exhausted 1" in text.stdout
    assert "ev-permanent-complaint" in text.stdout
    for output in (result.stdout, text.stdout, result.stderr, text.stderr):
        assert PHONE not in output and "5555550123" not in output
    assert await broker.depth(worker.settings.dead_letter_queue) == 5


async def test_replay_by_reason_moves_only_those_and_they_are_then_cancelled(
    simulator: Any, broker: BrokerProbe, start_worker: Any, cli: Cli
) -> None:
    """A dry run changes nothing; a replay by reason moves just those to their input queues, afresh."""
    sim, _ = simulator
    worker = await _fill_dlq(simulator, broker, start_worker)
    settings = worker.settings

    dry = await cli("dlq", "replay", "--reason", "permanent", "--dry-run", "--json")
    assert dry.returncode == 0, dry.stderr
    assert json.loads(dry.stdout)["matched"] == 2
    assert await broker.depth(settings.dead_letter_queue) == 5
    assert await broker.depth(settings.campaign_queue) == 0

    result = await cli("dlq", "replay", "--reason", "permanent")
    assert result.returncode == 0, result.stderr
    assert "replayed 2 of 2 matching message(s)" in result.stdout
    assert await broker.depth(settings.dead_letter_queue) == 3
    assert await broker.depth(settings.campaign_queue) == 1
    assert await broker.depth(settings.complaint_queue) == 1

    channel = broker.channel
    replayed = await (await channel.get_queue(settings.complaint_queue)).get(no_ack=False)
    headers = replayed.headers or {}
    assert headers[HEADER_REPLAYS] == 1
    assert HEADER_REPLAYED_AT in headers
    assert HEADER_REASON not in headers and HEADER_ATTEMPTS not in headers  # attempts start afresh
    await replayed.nack(requeue=True)

    # The API answers normally now (the scripted 422s are used up): both are cancelled.
    await start_worker()
    await wait_until(
        lambda: worker.permanent_ids <= broker.output_ids(), timeout_s=20, what="replayed events done"
    )
    assert {sim.workflows[i] for i in worker.permanent_ids} == {"cancelled"}
    await wait_until(lambda: broker.has_depth(settings.dead_letter_queue, 3), what="the others stay behind")


async def test_filters_by_event_type_age_and_limit(
    simulator: Any, broker: BrokerProbe, start_worker: Any, cli: Cli
) -> None:
    """Event type, age and limit filters select what they say; a dry run reports the targets."""
    await _fill_dlq(simulator, broker, start_worker)

    async def matched(*args: str) -> dict[str, Any]:
        result = await cli("dlq", "replay", "--dry-run", "--json", *args)
        assert result.returncode == 0, result.stderr
        return dict(json.loads(result.stdout))

    assert (await matched("--event-type", "complaint-received"))["matched"] == 1
    assert (await matched("--older-than", "1h"))["matched"] == 0
    assert (await matched("--newer-than", "1h"))["matched"] == 5
    limited = await matched("--reason", "invalid", "--limit", "1")
    assert limited["matched"] == 1
    assert sum(limited["targets"].values()) == 1


async def test_purge_refuses_without_yes_then_deletes_only_the_match(
    simulator: Any, broker: BrokerProbe, start_worker: Any, cli: Cli
) -> None:
    """`dlq purge` without --yes refuses and deletes nothing; with it, only the matching ones go."""
    worker = await _fill_dlq(simulator, broker, start_worker)
    dead_letter_queue = worker.settings.dead_letter_queue

    refused = await cli("dlq", "purge", "--reason", "invalid")
    assert refused.returncode == 2
    assert "--yes" in refused.stderr
    assert await broker.depth(dead_letter_queue) == 5

    done = await cli("dlq", "purge", "--reason", "invalid", "--yes")
    assert done.returncode == 0, done.stderr
    assert "purged 2 of 2" in done.stdout
    assert await broker.depth(dead_letter_queue) == 3
    listing = json.loads((await cli("dlq", "list", "--json")).stdout)
    assert listing["by_reason"] == {"permanent": 2, "exhausted": 1}


class _Died(Exception):
    """Stands for the command dying between the confirmed republish and the removal."""


async def test_interrupted_replay_loses_nothing(
    simulator: Any, broker: BrokerProbe, start_worker: Any, amqp_url: str
) -> None:
    """A replay that dies after republishing but before removing leaves a duplicate, never a loss."""
    worker = await _fill_dlq(simulator, broker, start_worker)
    settings = worker.settings
    connection = await aio_pika.connect(amqp_url)
    channel = await connection.channel(publisher_confirms=True, on_return_raises=True)

    async def die(letter: Letter) -> None:
        raise _Died(letter.event_id)

    with pytest.raises(_Died):
        await DeadLetters(channel, settings).replay(
            Filter(reasons=frozenset({"exhausted"})), limit=None, dry_run=False, after_publish=die
        )
    await connection.close()  # the dying process's connection goes away

    await wait_until(lambda: broker.has_depth(settings.dead_letter_queue, 5), what="nothing removed")
    assert await broker.depth(settings.campaign_queue) == 1  # the confirmed copy is there too


async def test_replay_killed_midway_keeps_every_message(
    simulator: Any, broker: BrokerProbe, start_worker: Any, make_settings: Any, tmp_path: Path
) -> None:
    """SIGKILL a real `dlq replay` of 1,000 messages mid-run: every event is still in the DLQ or its queue."""
    worker = await start_worker()
    settings = worker.settings
    ids = [f"ev-kill-{i}" for i in range(1000)]
    for event_id in ids:  # invalid (a bad workflow id): dead-lettered without an API call
        await broker.publish(campaign(["bad id!"], event_id=event_id))
    dead_letter_queue = settings.dead_letter_queue
    await wait_until(lambda: broker.has_depth(dead_letter_queue, 1000), timeout_s=30, what="all dead")
    await worker.stop()

    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "service", "dlq", "replay", cwd=tmp_path, env=_env(make_settings())
    )
    await wait_until(lambda: _has_some(broker, settings.campaign_queue), timeout_s=20, what="replay started")
    process.send_signal(signal.SIGKILL)
    await process.wait()
    assert process.returncode == -signal.SIGKILL
    await wait_until(  # the killed connection's unacked messages are back
        lambda: _total_is(broker, settings, at_least=1000), what="every message back in a queue"
    )
    assert await broker.depth(settings.dead_letter_queue) > 0  # it really was cut off midway

    seen: list[str] = []
    for queue_name in (settings.dead_letter_queue, settings.campaign_queue):
        queue = await broker.channel.get_queue(queue_name)
        while (message := await queue.get(no_ack=True, fail=False)) is not None:
            seen.append(json.loads(message.body)["id"])
    assert set(seen) == set(ids)
    assert len(seen) >= 1000


async def _total_is(broker: BrokerProbe, settings: Settings, at_least: int) -> bool:
    depths = [await broker.depth(q) for q in (settings.dead_letter_queue, settings.campaign_queue)]
    return sum(depths) >= at_least


async def _has_some(broker: BrokerProbe, queue: str) -> bool:
    return await broker.depth(queue) > 0


async def test_publish_sends_one_event_that_the_worker_cancels(
    simulator: Any, broker: BrokerProbe, start_worker: Any, cli: Cli
) -> None:
    """`publish` prints the event id; a running worker cancels every workflow it names."""
    await start_worker()
    result = await cli(
        "publish", "campaign-ended", "--workflow-id", "wf_pub_1", "--workflow-id", "wf_pub_2",
        "--campaign-id", "cmp_drill",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    event_id = result.stdout.strip()
    await wait_until(lambda: broker.output_ids() == {"wf_pub_1", "wf_pub_2"}, what="both cancelled")
    assert {o["data"]["trigger"]["event_id"] for o in broker.outputs} == {event_id}
    assert {o["data"]["trigger"]["campaign_id"] for o in broker.outputs} == {"cmp_drill"}


async def test_publish_refuses_an_event_that_would_be_invalid(cli: Cli) -> None:
    """A bad workflow id or a missing campaign id is refused before anything is sent."""
    bad_id = await cli("publish", "campaign-ended", "--workflow-id", "no spaces", "--campaign-id", "c")
    assert bad_id.returncode == 2
    assert "workflow_ids" in bad_id.stderr
    missing = await cli("publish", "complaint-received", "--workflow-id", "wf_1")
    assert missing.returncode == 2
    assert "complaint_id" in missing.stderr
    assert "Traceback" not in bad_id.stderr + missing.stderr


async def test_check_passes_with_a_good_setup(cli: Cli) -> None:
    """`check` prints one ok line per check and exits 0 when broker, topology and key all work."""
    result = await cli("check")
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert [line.split()[:2] for line in lines] == [
        ["ok", "config"],
        ["ok", "broker"],
        ["ok", "topology"],
        ["ok", "dialnexa"],
    ]


async def test_check_fails_clearly_with_a_wrong_key(cli: Cli) -> None:
    """A rejected key is one FAIL line naming the status, exit 1, and the key is never printed."""
    result = await cli("check", CANCELLER_DIALNEXA_API_KEY="sim_key:wrong_secret_value")
    assert result.returncode == 1
    assert "FAIL  dialnexa" in result.stdout
    assert "rejected the API key (401)" in result.stdout
    assert "wrong_secret_value" not in result.stdout + result.stderr
    assert "Traceback" not in result.stderr


async def test_check_fails_clearly_with_an_unreachable_broker(cli: Cli) -> None:
    """An unreachable broker is a FAIL line (no traceback, no password) and exit 1."""
    result = await cli(
        "check", CANCELLER_AMQP_URL="amqp://guest:hunter2pass@127.0.0.1:9/", CANCELLER_PUBLISH_TIMEOUT_S="3"
    )
    assert result.returncode == 1
    broker_line = next(line for line in result.stdout.splitlines() if " broker " in line)
    assert broker_line.startswith("FAIL")
    assert "cannot connect to amqp://127.0.0.1:9/" in broker_line
    assert "FAIL  topology  not checked" in result.stdout
    assert "hunter2pass" not in result.stdout + result.stderr
    assert "Traceback" not in result.stderr


def test_durations_and_masking() -> None:
    """Durations read with units; phone-like digit runs are masked, workflow ids are not."""
    assert duration_s("90") == 90
    assert duration_s("15m") == 900
    assert duration_s("2h") == 7200
    assert duration_s("1d") == 86_400
    with pytest.raises(Exception, match="not a duration"):
        duration_s("soon")
    assert dlq.mask("422: number +1 (555) 555-0123 refused for wf_12345678") == (
        "422: number [redacted] refused for wf_12345678"
    )
    assert dlq.mask("lead 555-555-0123\x1b[31m\nnext") == "lead [redacted] [31m next"


async def test_broker_dead_letters_at_the_delivery_limit_are_listed_and_replayed(
    broker: BrokerProbe, make_settings: Any, amqp_url: str
) -> None:
    """A message the broker dead-letters at the delivery limit shows as `delivery-limit` and goes home."""
    from service.broker import topology

    settings = make_settings(delivery_limit=1)
    connection = await aio_pika.connect(amqp_url)
    channel = await connection.channel(publisher_confirms=True, on_return_raises=True)
    await topology.declare(channel, settings)
    await broker.publish(campaign(["wf_crashy"], event_id="ev-crash-loop"))
    queue = await channel.get_queue(settings.campaign_queue)
    for _ in range(10):  # a consumer that keeps dying before it settles the message
        message = await queue.get(no_ack=False, fail=False, timeout=5)
        if message is None:
            break
        await message.nack(requeue=True)
    dead_letter_queue = settings.dead_letter_queue
    await wait_until(lambda: broker.has_depth(dead_letter_queue, 1), what="broker dead-lettered it")

    dead = DeadLetters(channel, settings)
    summary = await dead.summary(limit=5)
    assert dict(summary.by_reason) == {"delivery-limit": 1}
    letter = summary.newest[0]
    assert letter.event_id == "ev-crash-loop"
    assert letter.source_queue == settings.campaign_queue
    assert letter.dead_lettered_at is not None
    # A give-back (nack) has no confirm: wait until the broker has the message ready again.
    await wait_until(lambda: broker.has_depth(dead_letter_queue, 1), what="given back")
    moved = await dead.replay(Filter(reasons=frozenset({"delivery-limit"})), limit=None, dry_run=False)
    assert [m.event_id for m in moved.done] == ["ev-crash-loop"]
    replayed = await queue.get(no_ack=True, timeout=5)
    assert "x-death" not in (replayed.headers or {})
    assert (replayed.headers or {})[HEADER_REPLAYS] == 1
    await connection.close()


async def test_odd_dead_letters_are_listed_safely(
    broker: BrokerProbe, make_settings: Any, amqp_url: str
) -> None:
    """A dead letter with an absurd timestamp header and a phone number or escape codes in its
    type is listed (age unknown, type `unknown`), never crashing and never printing the number."""
    from service.broker import topology

    settings = make_settings()
    connection = await aio_pika.connect(amqp_url)
    channel = await connection.channel(publisher_confirms=True, on_return_raises=True)
    await topology.declare(channel, settings)
    dead_letter_exchange = await channel.get_exchange(settings.dead_letter_exchange)
    for event_type in (PHONE, "campaign-ended\x1b]0;owned\x07\nfake row"):
        body = json.dumps({"id": "ev-odd", "type": event_type}).encode()
        headers = {"x-canceller-dead-lettered-ms": 2**62, "x-canceller-reason": "invalid\x1b[31m"}
        await dead_letter_exchange.publish(aio_pika.Message(body, headers=headers), routing_key="")
    dead_letter_queue = settings.dead_letter_queue
    await wait_until(lambda: broker.has_depth(dead_letter_queue, 2), what="two odd dead letters")

    summary = await DeadLetters(channel, settings).summary(limit=5)
    assert summary.count == 2
    assert dict(summary.by_event_type) == {"unknown": 2}
    assert all(letter.dead_lettered_at is None for letter in summary.newest)
    assert all(letter.reason.isprintable() for letter in summary.newest)
    shown = repr(summary)
    assert "5555550123" not in shown and "\x1b" not in shown
    await connection.close()


async def test_one_failing_workflow_is_dead_lettered_alone_and_replayed_alone(
    simulator: Any, broker: BrokerProbe, start_worker: Any, cli: Cli
) -> None:
    """A 422 on one workflow, a 503 on another: the 503 is retried and cancelled, only the 422's
    workflow is named in the DLQ copy, and a replay calls that one workflow and no other."""
    sim, _ = simulator
    worker = await start_worker()
    failing, flaky, fine = wf_ids(3, "wf_part")
    sim.script(failing, [422])
    sim.script(flaky, [503, 503])  # both quick attempts of the first delivery fail
    await broker.publish(campaign([failing, flaky, fine], event_id="ev-partial"))
    dead_letter_queue = worker.settings.dead_letter_queue
    await wait_until(lambda: broker.has_depth(dead_letter_queue, 1), timeout_s=20, what="the dead letter")
    assert broker.output_ids() == {flaky, fine}
    assert [len(sim.calls_for(wf)) for wf in (failing, flaky, fine)] == [1, 3, 1]

    listed = await cli("dlq", "list", "--json")
    assert listed.returncode == 0, listed.stderr
    [letter] = json.loads(listed.stdout)["newest"]
    assert (letter["reason"], letter["failed_workflows"], letter["failed"]) == ("permanent", [failing], 1)

    replayed = await cli("dlq", "replay", "--reason", "permanent")
    assert replayed.returncode == 0, replayed.stderr
    await wait_until(lambda: failing in broker.output_ids(), timeout_s=15, what="the failed one replayed")
    assert [len(sim.calls_for(wf)) for wf in (failing, flaky, fine)] == [2, 3, 1]
    assert await broker.depth(dead_letter_queue) == 0


async def test_check_fails_for_a_key_that_may_read_but_not_cancel(simulator: Any, cli: Cli) -> None:
    """`check` probes the cancel permission itself: a read-only key is a FAIL line (403), exit 1."""
    sim, _ = simulator
    sim.config.read_only_key, sim.config.api_key = sim.config.api_key, "sim_key:another"
    result = await cli("check")
    assert result.returncode == 1
    assert "does not let the API key cancel workflows (403)" in result.stdout
