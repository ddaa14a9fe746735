"""Chaos drill: many events under combined faults, then invariants checked over the whole history.

    python -m drills.chaos                 # 2,000 events
    python -m drills.chaos --long          # 50,000 events (`make chaos`)
    python -m drills.chaos --events 5000 --seed 7

In a vhost of the run's own, it publishes events (campaign-ended naming 1-6 workflows,
complaint-received naming 1-2, drawn from a shared pool so events overlap; some workflows already
completed, some unknown to DialNexa; a few exact duplicates; a few percent invalid messages of
eight kinds) while:
- the simulator (its own process) injects 5xx, timeouts, dropped connections and 429s at set rates;
- every broker connection of the vhost is cut now and then (`rabbitmqctl close_all_connections -p`);
- the worker process (`python -m service run`) is SIGKILLed and restarted, and for part of the run
  a second worker competes for the same queues (and is SIGKILLed at the end of its period).
Faults fire at fixed fractions of progress (workflow/event pairs seen published), so they land
while work is under way whatever the machine's speed. A durable queue bound to the output exchange
collects every `workflow-cancelled` event. Waiting for the end is a condition with a deadline.

Checked at the end (exit code 1 if any fails):
1. every (workflow, valid event) pair has a `workflow-cancelled` event naming that trigger, and
   all events of one pair share one id, the UUIDv5 of "{workflow}/{event id}";
2. no event for anything else (an unknown workflow, an invalid message's ids);
3. the simulator holds every named workflow as cancelled (or completed, when it already was:
   those are published as already_terminal), and no id from an invalid message ever reached it;
4. every invalid message is in the DLQ with `x-canceller-reason: invalid`, and nothing else is;
5. the input and delay queues are empty and the workers exit 0 on SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import random
import sys
import time
import uuid
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiormq
from aio_pika.abc import AbstractConnection, AbstractIncomingMessage
from pamqp import commands as spec
from pydantic import SecretStr

from drills.common import (
    BROKER_ERRORS,
    RESULTS,
    DrillError,
    Vhost,
    connect,
    machine,
    metric_sum,
    metrics,
    queue_depth,
    stamp,
)
from service.core.events import COMPLAINT_RECEIVED
from testkit import Proc, SimProcess, campaign, complaint, spawn_worker, wait_answering, wait_until
from testkit.processes import API_KEY

OUTPUTS_QUEUE = "chaos.outputs"
INVALID_KINDS = (
    "not_json",
    "not_utf8",
    "not_object",
    "unknown_type",
    "bad_workflow_id",
    "missing_field",
    "too_many_ids",
    "wrong_content_type",
)
# Worker settings: transient faults must never exhaust retries within the run. Each call gets 4
# quick attempts; an event gets 21 broker attempts (20 delays of at most 1 s). With the fault rates
# below (4.5 % of calls fail) a workflow fails all 4 quick attempts with probability ~4e-6, and
# 21 broker attempts in a row practically never. The read timeout (1 s) is shorter than the
# simulator's injected timeout (1.5 s), so those calls really time out on the client.
WORKER_SETTINGS = {
    "CANCELLER_RETRY_DELAYS": ",".join(["0.2", "0.5"] + ["1"] * 18),
    "CANCELLER_CALL_ATTEMPTS": "4",
    "CANCELLER_CALL_RETRY_BUDGET_S": "10",
    "CANCELLER_CALL_BACKOFF_INITIAL_S": "0.05",
    "CANCELLER_CALL_BACKOFF_MAX_S": "0.5",
    "CANCELLER_HTTP_CONNECT_TIMEOUT_S": "1",
    "CANCELLER_HTTP_READ_TIMEOUT_S": "1",
    "CANCELLER_RECONNECT_INITIAL_S": "0.1",
    "CANCELLER_RECONNECT_MAX_S": "1",
    "CANCELLER_DRAIN_TIMEOUT_S": "5",
}


@dataclass(frozen=True)
class ChaosConfig:
    events: int = 2_000
    seed: int = 1
    invalid_share: float = 0.03
    duplicate_share: float = 0.01
    fault_5xx: float = 0.03
    fault_drop: float = 0.01
    fault_timeout: float = 0.003
    fault_429: float = 0.002
    fault_timeout_s: float = 1.5
    fault_retry_after_s: float = 0.2
    kills: int = 2  # SIGKILL and restart (besides retiring the second worker with SIGKILL)
    cuts: int = 2  # close_all_connections in the vhost
    storms: int = 0  # bursts of 4 cuts back to back: some land while a worker sets up its session
    second_worker: tuple[float, float] = (0.15, 0.7)  # progress window with two workers
    # Events per second. The short form publishes slower than the worker drains, so progress
    # follows publishing and the faults spread over the run (a worker takes seconds to start);
    # the long form publishes faster, so a backlog builds and faults hit a full prefetch window.
    publish_rate: float = 60.0
    deadline_s: float = 600.0
    out_dir: Path | None = None
    verbose: bool = False  # a line on stderr per fault fired

    @classmethod
    def long(cls, **overrides: Any) -> ChaosConfig:
        values: dict[str, Any] = {
            "events": 50_000,
            "kills": 6,
            "cuts": 8,
            "storms": 2,
            "second_worker": (0.3, 0.6),
            "publish_rate": 400.0,
            "deadline_s": 3_600.0,
        }
        return cls(**{**values, **overrides})


# --- the events --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Message:
    """One input message as published: `key` identifies it (AMQP message_id) in the DLQ."""

    key: str
    routing_key: str
    body: bytes
    content_type: str | None
    event_id: str | None  # None for invalid messages
    workflow_ids: tuple[str, ...] = ()
    invalid_kind: str | None = None


@dataclass
class Plan:
    messages: list[Message]
    completed: set[str]  # workflows DialNexa already holds as completed
    missing: set[str]  # workflows DialNexa does not know (404)
    poison: set[str]  # well-formed ids that appear only in invalid messages

    @property
    def valid(self) -> list[Message]:
        return [m for m in self.messages if m.invalid_kind is None]

    def expected_pairs(self) -> set[tuple[str, str]]:
        """(workflow, trigger event id) pairs that must each get a workflow-cancelled event."""
        return {
            (wf, m.event_id)
            for m in self.valid
            if m.event_id is not None
            for wf in m.workflow_ids
            if wf not in self.missing
        }


def _event(event_type: str, event_id: str, ids: list[str], n: int, rng: random.Random) -> dict[str, Any]:
    if event_type == COMPLAINT_RECEIVED:
        phone = f"+1555{rng.randint(1_000_000, 9_999_999)}"
        return complaint(ids, event_id, phone, complaint_id=f"cpl_{n}", lead_id=f"lead_{n}", campaign_id=None)
    return campaign(ids, event_id, campaign_id=f"cmp_{n % 101}")


def _invalid(kind: str, n: int, tag: str, rng: random.Random) -> tuple[bytes, str | None, list[str]]:
    """(body, content type, well-formed ids it names) of one invalid message."""
    poison = [f"wf_poison_{tag}_{n}_{k}" for k in range(rng.randint(1, 3))]
    good = _event("campaign-ended", f"evt_bad_{tag}_{n}", poison, n, rng)
    if kind == "not_json":
        return f'{{"specversion": "1.0", "id": "evt_bad_{tag}_{n}", '.encode(), "application/json", []
    if kind == "not_utf8":
        return b'{"id": "\xff\xfe' + str(n).encode() + b'"}', None, []
    if kind == "not_object":
        return json.dumps([n, tag]).encode(), "application/json", []
    if kind == "unknown_type":
        good["type"] = "campaign-started"
        return json.dumps(good).encode(), "application/cloudevents+json", poison
    if kind == "bad_workflow_id":
        good["data"]["workflow_ids"] = [poison[0], f"../wf_poison_{tag}_{n}/cancel", "wf bad id"]
        return json.dumps(good).encode(), "application/cloudevents+json", poison[:1]
    if kind == "missing_field":
        del good["data"]["campaign_id"]
        return json.dumps(good).encode(), None, poison
    if kind == "too_many_ids":
        ids = [f"wf_poison_{tag}_{n}_{k}" for k in range(1_001)]
        good["data"]["workflow_ids"] = ids
        return json.dumps(good).encode(), "application/json", ids
    if kind == "wrong_content_type":
        return json.dumps(good).encode(), "text/plain", poison
    raise ValueError(kind)


def make_plan(config: ChaosConfig, tag: str) -> Plan:
    """Every message of the run, reproducible from the seed (ids carry the run's tag)."""
    rng = random.Random(config.seed)  # noqa: S311  # test data, not crypto
    slots = int(config.events * 2.6)  # about how many workflow slots the valid events fill
    pool = [f"{rng.choice(('wf', 'wfl', 'workflow'))}_{tag}_{k}" for k in range(max(20, int(slots * 0.6)))]
    completed = set(rng.sample(pool, len(pool) * 3 // 100))
    missing: set[str] = set()
    messages: list[Message] = []
    invalid_every = round(1 / config.invalid_share) if config.invalid_share else 0
    for n in range(config.events):
        key = f"chaos-{tag}-{n}"
        if invalid_every and n % invalid_every == invalid_every // 2:
            kind = INVALID_KINDS[(n // invalid_every) % len(INVALID_KINDS)]
            body, content_type, _ = _invalid(kind, n, tag, rng)
            route = rng.choice(("campaign-ended", "complaint-received"))
            messages.append(Message(key, route, body, content_type, None, invalid_kind=kind))
            continue
        valid = [m for m in messages[-50:] if m.invalid_kind is None]
        if valid and rng.random() < config.duplicate_share:  # the CRM sent an event twice
            twin = rng.choice(valid)
            messages.append(
                Message(key, twin.routing_key, twin.body, twin.content_type, twin.event_id, twin.workflow_ids)
            )
            continue
        complaint = rng.random() < 0.3
        ids = rng.sample(pool, rng.randint(1, 2) if complaint else rng.randint(1, 6))
        if rng.random() < 0.01:
            ids.append(f"wf_missing_{tag}_{n}")
            missing.add(ids[-1])
        event_type = "complaint-received" if complaint else "campaign-ended"
        event_id = f"evt_{tag}_{n}"
        body = json.dumps(_event(event_type, event_id, ids, n, rng)).encode()
        content_type = rng.choice(("application/cloudevents+json", "application/json", None))
        messages.append(Message(key, event_type, body, content_type, event_id, tuple(ids)))
    poison = {wf for m in messages if m.invalid_kind for wf in _poison_ids(m, tag)}
    return Plan(messages, completed, missing, poison)


def _poison_ids(message: Message, tag: str) -> list[str]:
    """Well-formed ids an invalid message names (read back from its body, where it parses)."""
    marker = f"wf_poison_{tag}_"
    try:
        body = json.loads(message.body)
        ids = body.get("data", {}).get("workflow_ids", [])
    except (ValueError, AttributeError):
        return []
    return [i for i in ids if isinstance(i, str) and i.startswith(marker) and "/" not in i and " " not in i]


# --- the run -----------------------------------------------------------------------------------


@dataclass
class Output:
    subject: str
    event_id: str
    id: str
    outcome: str


@dataclass
class ChaosResult:
    config: ChaosConfig
    started_at: str = ""
    wall_s: float = 0.0
    drain_s: float = 0.0
    counts: dict[str, Any] = field(default_factory=dict)
    violations: list[str] = field(default_factory=list)
    kills: int = 0
    cuts: int = 0
    two_workers_s: float = 0.0
    second_worker_processed: float = 0.0
    republished: int = 0
    out_dir: Path | None = None

    @property
    def ok(self) -> bool:
        return not self.violations


class Collector:
    """Consumes the output queue, reconnecting after every cut; keeps every event once per delivery."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.outputs: list[Output] = []
        self.pairs: set[tuple[str, str]] = set()
        self.redeliveries = 0  # deliveries of a message this collector had already seen
        self._seen: set[bytes] = set()
        self._stop = asyncio.Event()
        self.connection: AbstractConnection | None = None

    async def run(self) -> None:
        while not self._stop.is_set():
            closed = asyncio.Event()
            try:
                self.connection = connection = await connect(self.url)
                connection.close_callbacks.add(lambda *_, closed=closed: closed.set())
                channel = await connection.channel()
                await channel.set_qos(prefetch_count=500)
                queue = await channel.get_queue(OUTPUTS_QUEUE, ensure=False)
                await queue.consume(self._on_output)
                stop = asyncio.ensure_future(self._stop.wait())
                lost = asyncio.ensure_future(closed.wait())
                await asyncio.wait({stop, lost}, return_when=asyncio.FIRST_COMPLETED)
                stop.cancel()
                lost.cancel()
            except BROKER_ERRORS:
                await asyncio.sleep(0.1)  # the vhost's connections were just cut: try again soon
            finally:
                if self.connection is not None:
                    with contextlib.suppress(Exception):
                        await self.connection.close()
                    self.connection = None

    async def stop(self) -> None:
        self._stop.set()

    async def _on_output(self, message: AbstractIncomingMessage) -> None:
        self.record(message.body)
        with contextlib.suppress(Exception):  # a cut between delivery and ack: it comes again
            await message.ack()

    def record(self, body: bytes) -> None:
        if body in self._seen:
            self.redeliveries += 1
            return
        self._seen.add(body)
        event = json.loads(body)
        output = Output(
            event["subject"], event["data"]["trigger"]["event_id"], event["id"], event["data"]["outcome"]
        )
        self.outputs.append(output)
        self.pairs.add((output.subject, output.event_id))


class Workers:
    """The worker processes: start, SIGKILL, restart; each process logs to a file of its own."""

    def __init__(self, amqp_url: str, base_url: str, log_dir: Path) -> None:
        self.amqp_url = amqp_url
        self.base_url = base_url
        self.log_dir = log_dir
        self.running: dict[str, Proc] = {}
        self.started = 0
        self.exit_codes: list[int | None] = []
        self.crashes: list[str] = []  # workers that exited without being told to

    async def revive(self) -> None:
        """A worker that exited by itself is a defect: record it, start a replacement."""
        for name, proc in list(self.running.items()):
            if not proc.alive:
                self.crashes.append(f"{proc.name} exited with {proc.process.returncode}: {proc.log_tail(3)}")
                await self.start(name)

    async def start(self, name: str, timeout_s: float = 60) -> Proc:
        """Start a worker process and wait until it consumes (/readyz answers 200)."""
        self.started += 1
        proc = await spawn_worker(
            self.amqp_url, self.base_url, WORKER_SETTINGS, self.log_dir, name=f"{name}-{self.started}"
        )
        self.running[name] = proc
        await wait_answering(proc, "/readyz", timeout_s=timeout_s)
        return proc

    async def kill(self, name: str) -> None:
        proc = self.running.pop(name)
        self.exit_codes.append(await proc.kill())

    async def stop_all(self) -> list[int | None]:
        codes = []
        for name in list(self.running):
            codes.append(await self.running.pop(name).stop())
        return codes

    async def inflight(self) -> float:
        """Events in flight over every running worker (inf when one does not answer)."""
        total = 0.0
        for proc in self.running.values():
            assert proc.port is not None  # noqa: S101  # set at start
            values = await metrics(proc.port)
            if not values:
                return float("inf")
            total += metric_sum(values, "canceller_inflight_events")
        return total


class InputPublisher:
    """Publishes the plan at a fixed rate (persistent, confirmed); a batch cut off by a broker cut
    is published again, so an input may arrive twice (the CRM side of at-least-once)."""

    def __init__(self, url: str, rate: float) -> None:
        self.url = url
        self.rate = rate
        self.published = 0
        self.republished = 0

    async def run(self, messages: list[Message]) -> None:
        connection: AbstractConnection | None = None
        started = time.monotonic()
        batch_size = max(1, min(200, int(self.rate / 10)))
        try:
            while self.published < len(messages):
                due_at = started + self.published / self.rate
                await asyncio.sleep(max(0.0, due_at - time.monotonic()))
                batch = messages[self.published : self.published + batch_size]
                try:
                    if connection is None or connection.is_closed:
                        connection = await connect(self.url)
                    channel = await connection.channel(publisher_confirms=True)
                    underlay = await channel.get_underlay_channel()
                    await asyncio.gather(*(self._publish(underlay, m) for m in batch))
                    await channel.close()
                except BROKER_ERRORS:
                    self.republished += len(batch)  # unknown whether they were routed: send again
                    connection = None
                    await asyncio.sleep(0.1)
                    continue
                self.published += len(batch)
        finally:
            if connection is not None:
                with contextlib.suppress(Exception):
                    await connection.close()

    @staticmethod
    async def _publish(channel: aiormq.abc.AbstractChannel, message: Message) -> None:
        properties = spec.Basic.Properties(
            delivery_mode=2, content_type=message.content_type, message_id=message.key
        )
        await channel.basic_publish(
            message.body,
            exchange="crm.events",
            routing_key=message.routing_key,
            properties=properties,
            timeout=10,
        )


def schedule(config: ChaosConfig) -> list[tuple[float, str]]:
    """(progress fraction, action) pairs, in order: cuts, kills, the second worker's window."""
    start_b, end_b = config.second_worker
    actions = [(0.08 + 0.77 * (i + 0.5) / config.cuts, "cut") for i in range(config.cuts)]
    inside = 0
    for i in range(config.kills):
        at = 0.1 + 0.75 * (i + 0.5) / config.kills
        if start_b < at < end_b:
            target = "b" if inside % 2 == 0 else "a"
            inside += 1
        else:
            target = "a"
        actions.append((at, f"kill-{target}"))
    actions += [(0.12 + 0.7 * (i + 0.5) / config.storms, "storm") for i in range(config.storms)]
    actions += [(start_b, "start-b"), (end_b, "retire-b")]
    return sorted(actions)


async def _declare(url: str) -> list[str]:
    """The service's topology (with the drill's delays) and the output collection queue; returns
    the queues that must be empty at the end."""
    from service.broker import topology
    from service.config import Settings
    from service.retry import delay_steps_s

    settings = Settings(
        _env_file=None,  # type: ignore[call-arg]  # pydantic-settings' init-only option
        dialnexa_api_key=SecretStr(API_KEY),
        retry_delays=tuple(float(d) for d in WORKER_SETTINGS["CANCELLER_RETRY_DELAYS"].split(",")),
    )
    connection = await connect(url)
    try:
        channel = await connection.channel()
        await topology.declare(channel, settings)
        outputs = await channel.declare_queue(OUTPUTS_QUEUE, durable=True)
        await outputs.bind(settings.output_exchange, settings.output_routing_key)
    finally:
        await connection.close()
    delays = [settings.delay_queue_name(s) for s in delay_steps_s(settings.retry_delays)]
    return [*settings.input_queues, *delays]


async def run_chaos(config: ChaosConfig) -> ChaosResult:
    """One drill: publish, inject faults, wait for the end, check the invariants. Cleans up always."""
    result = ChaosResult(config, started_at=datetime.now(UTC).isoformat(timespec="seconds"))
    result.out_dir = config.out_dir or RESULTS / f"chaos-{stamp()}"
    started = time.monotonic()
    async with Vhost("canceller-chaos") as vhost:
        sim: SimProcess | None = None
        workers: Workers | None = None
        try:
            flags = [
                f"--fault-5xx={config.fault_5xx}",
                f"--fault-drop={config.fault_drop}",
                f"--fault-timeout={config.fault_timeout}",
                f"--fault-429={config.fault_429}",
                f"--fault-timeout-s={config.fault_timeout_s}",
                f"--fault-retry-after-s={config.fault_retry_after_s}",
                f"--fault-seed={config.seed}",
            ]
            sim = await SimProcess.start(result.out_dir, *flags)
            workers = Workers(vhost.url, sim.base_url, result.out_dir)
            await _drill(config, vhost, sim, workers, result)
        except DrillError as error:
            result.violations.append(f"drill could not finish: {error}")
        finally:
            if workers is not None:
                for proc in list(workers.running.values()):
                    await proc.kill()
            if sim is not None:
                await sim.proc.stop()
    result.wall_s = time.monotonic() - started
    return result


async def _drill(
    config: ChaosConfig, vhost: Vhost, sim: SimProcess, workers: Workers, result: ChaosResult
) -> None:
    tag = uuid.uuid4().hex[:6]
    plan = make_plan(config, tag)
    must_empty = await _declare(vhost.url)
    await sim.set_workflows(dict.fromkeys(plan.completed, "completed"))
    expected = plan.expected_pairs()
    collector = Collector(vhost.url)
    collecting = asyncio.create_task(collector.run())
    publisher = InputPublisher(vhost.url, config.publish_rate)
    probe: AbstractConnection | None = None
    publishing: asyncio.Task[None] | None = None
    try:
        await workers.start("a")
        publishing = asyncio.create_task(publisher.run(plan.messages))
        await _monkey(config, vhost, workers, collector, expected, publishing, result)
        await publishing
        result.republished = publisher.republished

        async def settled() -> bool:
            nonlocal probe
            await workers.revive()
            if len(collector.pairs & expected) < len(expected):
                return False
            try:
                if probe is None or probe.is_closed:
                    probe = await connect(vhost.url)
                for queue in must_empty:
                    if await queue_depth(probe, queue):
                        return False
            except BROKER_ERRORS:
                probe = None
                return False
            return await workers.inflight() == 0

        drain_started = time.monotonic()
        await wait_until(
            settled,
            timeout_s=config.deadline_s,
            what="every pair published and the queues empty",
            interval_s=0.2,
        )
        result.drain_s = time.monotonic() - drain_started
        codes = await workers.stop_all()
        if any(code != 0 for code in codes):
            result.violations.append(f"workers exited with {codes} on SIGTERM (expected 0)")
    finally:
        if publishing is not None and not publishing.done():  # the drill failed early
            publishing.cancel()
            with contextlib.suppress(BaseException):
                await publishing
        await collector.stop()
        await collecting
        if probe is not None:
            with contextlib.suppress(Exception):
                await probe.close()
    await _check(plan, vhost, sim, collector, expected, must_empty, workers, result)


async def _monkey(
    config: ChaosConfig,
    vhost: Vhost,
    workers: Workers,
    collector: Collector,
    expected: set[tuple[str, str]],
    publishing: asyncio.Task[None],
    result: ChaosResult,
) -> None:
    """Fire each scheduled fault once progress reaches its fraction (with a deadline).

    Starting a worker waits until it is ready, and meanwhile the others go on, so progress can
    jump past several fractions: faults are kept at least `gap` of progress apart (until 98 %,
    after which whatever is left fires), so they do not land all at once.
    """
    pending = schedule(config)
    deadline = time.monotonic() + config.deadline_s
    gap = 0.4 * 0.77 / max(1, len(pending))
    last_fired = -1.0
    b_started = 0.0

    def progress() -> float:
        return min(1.0, len(collector.pairs) / max(1, len(expected)))  # pairs seen published

    while pending:
        if publishing.done() and publishing.exception() is not None:
            raise DrillError(f"publishing failed: {publishing.exception()!r}")
        now = progress()
        if pending[0][0] <= now and (now >= last_fired + gap or now >= 0.98):
            _, action = pending.pop(0)
            if config.verbose:
                print(f"chaos: {now:6.1%} of pairs published: {action}", file=sys.stderr, flush=True)
            if action == "cut":
                await vhost.close_all_connections("chaos")
                result.cuts += 1
            elif action == "storm":
                for _ in range(4):  # each rabbitmqctl call takes about a second: reconnects are under way
                    await vhost.close_all_connections("chaos")
                    result.cuts += 1
            elif action == "start-b":
                await workers.start("b")
                b_started = time.monotonic()
            elif action == "retire-b":
                proc = workers.running["b"]
                port = proc.port
                assert port is not None  # noqa: S101  # set at start

                async def b_settled_one(port: int = port) -> bool:
                    values = await metrics(port)
                    return metric_sum(values, "canceller_events_processed_total") > 0

                # On a busy machine the first worker may have raced ahead while this one started:
                # give it a bounded chance to compete before it is killed (no failure if not).
                with contextlib.suppress(DrillError):
                    await wait_until(
                        b_settled_one,
                        timeout_s=15,
                        what="the second worker settling an event",
                        interval_s=0.1,
                    )
                values = await metrics(port)
                result.second_worker_processed += metric_sum(values, "canceller_events_processed_total")
                await workers.kill("b")
                result.kills += 1
                result.two_workers_s = time.monotonic() - b_started
            else:
                target = action.removeprefix("kill-")
                if target == "b":
                    proc = workers.running[target]
                    assert proc.port is not None  # noqa: S101  # set at start
                    values = await metrics(proc.port)
                    result.second_worker_processed += metric_sum(values, "canceller_events_processed_total")
                await workers.kill(target)
                result.kills += 1
                await workers.start(target)
            last_fired = progress()
        await workers.revive()
        if time.monotonic() > deadline:
            raise DrillError(f"progress stalled at {progress():.1%} with faults still scheduled")
        await asyncio.sleep(0.1)


async def _drain_queue(url: str, queue_name: str) -> list[AbstractIncomingMessage]:
    """Every message of a queue, taken with basic.get until it is empty."""
    messages: list[AbstractIncomingMessage] = []
    connection = await connect(url)
    try:
        channel = await connection.channel()
        queue = await channel.get_queue(queue_name, ensure=False)
        while (message := await queue.get(no_ack=True, fail=False, timeout=10)) is not None:
            messages.append(message)
    finally:
        await connection.close()
    return messages


async def _check(
    plan: Plan,
    vhost: Vhost,
    sim: SimProcess,
    collector: Collector,
    expected: set[tuple[str, str]],
    must_empty: list[str],
    workers: Workers,
    result: ChaosResult,
) -> None:
    """The invariants over the whole history, and the counts."""
    violations = result.violations
    violations += [f"a worker died by itself: {crash}" for crash in workers.crashes]
    for message in await _drain_queue(vhost.url, OUTPUTS_QUEUE):  # what the collector had not taken
        collector.record(message.body)
    dead = await _drain_queue(vhost.url, "workflow-canceller.dlq")

    # 1, 2: one id per pair, the deterministic one; nothing unexpected.
    ids_by_pair: dict[tuple[str, str], set[str]] = defaultdict(set)
    for output in collector.outputs:
        ids_by_pair[(output.subject, output.event_id)].add(output.id)
    missing_pairs = expected - set(ids_by_pair)
    if missing_pairs:
        violations.append(
            f"{len(missing_pairs)} (workflow, event) pairs never published, e.g. {sorted(missing_pairs)[:3]}"
        )
    split = {pair: ids for pair, ids in ids_by_pair.items() if len(ids) > 1}
    if split:
        violations.append(
            f"{len(split)} pairs published under more than one id, e.g. {list(split.items())[:2]}"
        )
    wrong = [
        pair
        for pair, ids in ids_by_pair.items()
        if ids != {str(uuid.uuid5(uuid.NAMESPACE_URL, "/".join(pair)))}
    ]
    if wrong:
        violations.append(
            f"{len(wrong)} pairs with an id that is not UUIDv5(workflow/event), e.g. {wrong[:2]}"
        )
    unexpected = set(ids_by_pair) - expected
    if unexpected:
        violations.append(
            f"{len(unexpected)} events for pairs no valid event named, e.g. {sorted(unexpected)[:3]}"
        )
    bad_outcome = [
        o for o in collector.outputs if o.subject in plan.completed and o.outcome != "already_terminal"
    ]
    if bad_outcome:
        violations.append(f"{len(bad_outcome)} completed workflows published as {bad_outcome[0].outcome}")

    # 3: DialNexa's side.
    state = await sim.workflows()
    named = {wf for m in plan.valid for wf in m.workflow_ids}
    not_terminal = sorted(
        wf
        for wf in named - plan.missing
        if state.get(wf) != ("completed" if wf in plan.completed else "cancelled")
    )
    if not_terminal:
        violations.append(
            f"{len(not_terminal)} named workflows not cancelled at DialNexa, e.g. {not_terminal[:3]}"
        )
    leaked = sorted(wf for wf in state if wf in plan.poison or "poison" in wf)
    if leaked:
        violations.append(f"ids from invalid messages reached DialNexa: {leaked[:3]}")
    stats = await sim.stats()

    # 4: the DLQ holds the invalid messages and nothing else.
    invalid_keys = {m.key for m in plan.messages if m.invalid_kind}
    dlq_reasons: Counter[str] = Counter()
    dlq_keys: Counter[str] = Counter()
    for message in dead:
        reason = (message.headers or {}).get("x-canceller-reason")
        reason = reason.decode() if isinstance(reason, bytes) else str(reason)
        dlq_reasons[reason] += 1
        dlq_keys[message.message_id or "?"] += 1
        if reason != "invalid" or message.message_id not in invalid_keys:
            violations.append(f"DLQ holds message {message.message_id} with reason {reason}")
    absent = invalid_keys - set(dlq_keys)
    if absent:
        violations.append(f"{len(absent)} invalid messages not in the DLQ, e.g. {sorted(absent)[:3]}")

    # 5: nothing left behind.
    connection = await connect(vhost.url)
    try:
        for queue in must_empty:
            depth = await queue_depth(connection, queue)
            if depth:
                violations.append(f"{queue} still holds {depth} messages")
    finally:
        await connection.close()

    valid = plan.valid
    result.counts = {
        "messages": len(plan.messages),
        "valid events": Counter(m.routing_key for m in valid),
        "exact duplicates": len(valid) - len({m.event_id for m in valid}),
        "invalid messages": Counter(m.invalid_kind for m in plan.messages if m.invalid_kind),
        "inputs re-sent after a cut": result.republished,
        "workflows named": len(named),
        "already completed": len(named & plan.completed),
        "unknown (404)": len(plan.missing),
        "workflow/event pairs": len(expected),
        "workflow-cancelled received": len(collector.outputs),
        "duplicates published": len(collector.outputs) - len(ids_by_pair),
        "collector redeliveries": collector.redeliveries,
        "API calls": stats.get("call_count"),
        "API calls by status": dict(sorted(stats.get("status_counts", {}).items())),
        "injected faults": stats.get("fault_counts"),
        "SIGKILLs": result.kills,
        "worker processes started": workers.started,
        "broker cuts": result.cuts,
        "workers that died by themselves": len(workers.crashes),
        "two workers for": f"{result.two_workers_s:.1f} s",
        "events settled by the second worker": int(result.second_worker_processed),
        "DLQ by reason": dict(dlq_reasons),
        "DLQ copies beyond one": sum(dlq_keys.values()) - len(dlq_keys),
        "worker log lines at error level": error_lines(workers.log_dir),
    }


def error_lines(log_dir: Path) -> Counter[str]:
    """Worker log lines at level error, by event name (not an invariant: a sign worth reading)."""
    counts: Counter[str] = Counter()
    for path in sorted(log_dir.glob("[ab]-*.log")):
        for line in path.read_text(errors="replace").splitlines():
            with contextlib.suppress(ValueError):
                record = json.loads(line)
                if isinstance(record, dict) and record.get("level") in ("error", "critical"):
                    counts[str(record.get("event", "?"))[:40]] += 1
    return counts


def report_lines(result: ChaosResult) -> list[str]:
    """The figures of one drill, as printed."""
    c = result.config
    lines = [
        f"chaos: {c.events} messages, seed {c.seed} (started {result.started_at}; {machine()})",
        f"faults per call: 5xx {c.fault_5xx:.1%}, drop {c.fault_drop:.1%}, timeout {c.fault_timeout:.1%} "
        f"(held {c.fault_timeout_s:g} s, client read timeout 1 s), 429 {c.fault_429:.1%} "
        f"(Retry-After {c.fault_retry_after_s:g} s)",
        f"worker settings: {' '.join(f'{k}={v}' for k, v in WORKER_SETTINGS.items())}",
    ]
    for name, value in result.counts.items():
        if isinstance(value, Counter | dict):
            value = ", ".join(f"{k}: {v}" for k, v in value.items()) or "none"
        lines.append(f"{name}: {value}")
    lines.append(f"wall time: {result.wall_s:.1f} s (after the last scheduled fault: {result.drain_s:.1f} s)")
    lines.append(f"logs: {result.out_dir}")
    if result.violations:
        lines += ["VIOLATIONS:", *(f"  - {v}" for v in result.violations)]
    else:
        lines.append("invariants: all hold")
    return lines


def main(argv: list[str] | None = None) -> int:
    """Run the drill, print its figures, exit 1 on any violated invariant."""
    parser = argparse.ArgumentParser(prog="python -m drills.chaos", description=__doc__.splitlines()[0])
    parser.add_argument("--long", action="store_true", help="50,000 events, 6 kills, 8 broker cuts")
    parser.add_argument("--events", type=int, default=None, help="number of messages")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--storms", type=int, default=None, help="bursts of 4 broker cuts (long: 2)")
    parser.add_argument("--out", type=Path, default=None, help="directory for the process logs")
    args = parser.parse_args(argv)
    overrides: dict[str, Any] = {"seed": args.seed, "out_dir": args.out, "verbose": True}
    if args.events is not None:
        overrides["events"] = args.events
    if args.storms is not None:
        overrides["storms"] = args.storms
    config = ChaosConfig.long(**overrides) if args.long else ChaosConfig(**overrides)
    for noisy in ("aiormq", "aio_pika"):  # the drill's own connections are cut on purpose
        logging.getLogger(noisy).setLevel(logging.CRITICAL)
    result = asyncio.run(run_chaos(config))
    print("\n".join(report_lines(result)), flush=True)
    return 0 if result.ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
