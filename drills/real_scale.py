"""Real scale: a campaign backlog drained at a rate-limited API while complaints keep arriving.

    python -m drills.real_scale                       # 20,000 workflows at 150 calls per 60 s
    python -m drills.real_scale --limit 150 --window-s 0.6 --max-hold-s 3 \\
        --connect-timeout-s 0.2 --read-timeout-s 0.4 --publish-timeout-s 0.3 \\
        --complaint-every-s 0.5                       # the same, 100 times faster

In a vhost of the run's own, one worker process (`python -m service run`) cancels workflows
against the simulator (its own process, rate-limited to `--limit` calls per `--window-s`). The
drill binds a queue of its own to the output exchange, publishes the whole backlog at once
(`--workflows` ids `wf_rs_<n>`, `--per-event` per campaign-ended event, persistent and confirmed)
and then, every `--complaint-every-s`, a complaint-received event naming one workflow
`wf_urgent_<n>`, until every backlog workflow has a `workflow-cancelled` event (or
`--duration-s` has passed, or progress stalls). It waits, with a deadline, for the complaints still
outstanding, then reads:
- the worker's /metrics: the longest hold of a delivery (`canceller_delivery_hold_max_seconds`, a
  running maximum), broker reconnects, hand-offs of held deliveries to continuation copies;
- the simulator's call records (`/_sim/calls`, pulled again before its ring of records can wrap):
  cancel calls per backlog workflow and their answers (a 409 means a workflow was called again
  after it was cancelled), and the calls per second achieved against the limit;
- the DLQ depth, and the latency of each complaint from its publish to its output event.

Writes the figures as JSON on stdout (and to `--out FILE`) and a short summary on stderr; the
processes' logs go to drills/results/real-scale-<time>/. Exit code 1 when a check failed: a 409,
a hold above CANCELLER_MAX_HOLD_S, a backlog workflow or a complaint left without its event (other
than by `--duration-s`), a message in the DLQ, a broker reconnect, or a worker that did not exit 0.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import platform
import shlex
import sys
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aio_pika
from aio_pika.abc import AbstractConnection, AbstractIncomingMessage
from pamqp import commands as spec

from drills.common import (
    RESULTS,
    DrillError,
    Vhost,
    connect,
    machine,
    metric_sum,
    metrics,
    queue_depth,
    stamp,
    start_worker,
)
from testkit import PYTHON, Proc, SimProcess, campaign, complaint, encoded, http_get, wait_until

INPUT_EXCHANGE = "crm.events"
OUTPUT_EXCHANGE = "workflow.events"
OUTPUT_KEY = "workflow-cancelled"
OUTPUTS_QUEUE = "real-scale.outputs"
DLQ = "workflow-canceller.dlq"
BACKLOG_PREFIX = "wf_rs_"
URGENT_PREFIX = "wf_urgent_"
MAX_PER_EVENT = 1_000  # the service's limit of workflow ids per event
# The simulator keeps its most recent 100,000 call records: pull them again well before they wrap.
PULL_EVERY_CALLS = 50_000
RETRY_DELAY_MAX_S = 600.0  # the longest of the service's default retry delays
TERMINAL_CACHE_TTL_S = 1_800.0  # the service's default; must outlive a hold plus the longest delay
PROGRESS_EVERY_S = 30.0


@dataclass(frozen=True)
class ScaleConfig:
    workflows: int = 20_000
    per_event: int = 1_000
    limit: int = 150
    window_s: float = 60.0
    max_hold_s: float = 300.0
    complaint_every_s: float = 10.0
    duration_s: float | None = None  # None: until the backlog is drained
    connect_timeout_s: float = 5.0
    read_timeout_s: float = 15.0
    publish_timeout_s: float = 10.0

    @property
    def finish_margin_s(self) -> float:
        """What the worker reserves at the end of a hold for a call started just before it."""
        return self.connect_timeout_s + self.read_timeout_s + 2 * self.publish_timeout_s

    @property
    def expected_drain_s(self) -> float:
        """How long the backlog takes at exactly the limit."""
        return self.workflows / self.limit * self.window_s

    @property
    def stall_s(self) -> float:
        """No new backlog event for this long means progress stalled."""
        return max(30.0, 10 * self.window_s, 4 * self.max_hold_s)

    @property
    def deadline_s(self) -> float:
        """The longest the drain may take before the drill gives up (without `--duration-s`)."""
        return 3 * self.expected_drain_s + 10 * self.max_hold_s + 60


@dataclass
class Outputs:
    """What the output queue delivered: backlog workflows seen, complaints answered (by when)."""

    workflows: int
    backlog: set[str] = field(default_factory=set)
    duplicates: int = 0  # backlog workflows with more than one workflow-cancelled event
    unexpected: int = 0  # events for ids this drill never named
    complaint_sent_at: dict[str, float] = field(default_factory=dict)  # workflow -> monotonic
    latencies_s: dict[str, float] = field(default_factory=dict)  # workflow -> seconds
    received: int = 0
    last_progress_at: float = field(default_factory=time.monotonic)
    drained_at: float | None = None

    def record(self, body: bytes, now: float) -> None:
        """Take in one workflow-cancelled event."""
        self.received += 1
        try:
            subject = json.loads(body)["subject"]
        except (ValueError, KeyError, TypeError):
            self.unexpected += 1
            return
        if not isinstance(subject, str):
            self.unexpected += 1
        elif subject.startswith(BACKLOG_PREFIX):
            if subject in self.backlog:
                self.duplicates += 1
                return
            self.backlog.add(subject)
            self.last_progress_at = now
            if len(self.backlog) >= self.workflows and self.drained_at is None:
                self.drained_at = now
        elif subject in self.complaint_sent_at:
            if subject not in self.latencies_s:
                self.latencies_s[subject] = now - self.complaint_sent_at[subject]
        else:
            self.unexpected += 1

    @property
    def complaints_outstanding(self) -> int:
        return len(self.complaint_sent_at) - len(self.latencies_s)


@dataclass
class CallTally:
    """Cancel calls per backlog workflow, counted from the simulator's call records.

    The simulator keeps its latest 100,000 records, oldest first, and answers them all at once; a
    pull counts the records after the last one the previous pull counted. The drill pulls again
    whenever 50,000 calls were made since the previous pull, so the ring never drops one uncounted
    (the report compares the count with the simulator's own call counter).
    """

    per_workflow: Counter[str] = field(default_factory=Counter)
    backlog_statuses: Counter[str] = field(default_factory=Counter)
    all_statuses: Counter[str] = field(default_factory=Counter)
    counted: int = 0
    pulled_at_count: int = 0  # the simulator's call counter just before the latest pull
    first_started: float | None = None
    last_finished: float | None = None
    _last: dict[str, Any] | None = None

    async def pull(self, sim: SimProcess) -> None:
        """Count the records that arrived since the previous pull."""
        self.pulled_at_count = int((await sim.stats()).get("call_count", 0))
        _, records = await http_get(f"{sim.control}/calls", timeout_s=120)
        if not isinstance(records, list):
            raise DrillError("simulator: /_sim/calls did not answer a list")
        start = 0
        if self._last is not None:
            found = next((i for i in range(len(records) - 1, -1, -1) if records[i] == self._last), None)
            if found is not None:  # else the ring wrapped past it: count what is left
                start = found + 1
        for record in records[start:]:
            self._count(record)
        if records:
            self._last = records[-1]

    def _count(self, record: dict[str, Any]) -> None:
        self.counted += 1
        status = "dropped" if record.get("status") is None else str(record["status"])
        self.all_statuses[status] += 1
        started, finished = float(record["started_at"]), float(record["finished_at"])
        if self.first_started is None or started < self.first_started:
            self.first_started = started
        if self.last_finished is None or finished > self.last_finished:
            self.last_finished = finished
        workflow_id = str(record.get("workflow_id", ""))
        if record.get("method") == "POST" and workflow_id.startswith(BACKLOG_PREFIX):
            self.per_workflow[workflow_id] += 1
            self.backlog_statuses[status] += 1

    def calls_per_s(self) -> float | None:
        """Every API call over the time from the first call to the last."""
        if self.first_started is None or self.last_finished is None:
            return None
        span_s = self.last_finished - self.first_started
        return self.counted / span_s if span_s > 0 else None


@dataclass
class Run:
    """The drill's state while it runs, and what the report is made of."""

    config: ScaleConfig
    out_dir: Path
    outputs: Outputs
    tally: CallTally = field(default_factory=CallTally)
    published_at: float | None = None
    stopped: str = "not started"
    stop_at: float | None = None
    worker_metrics: dict[str, float] = field(default_factory=dict)
    sim_stats: dict[str, Any] = field(default_factory=dict)
    dlq_depth: int | None = None
    worker_exit_code: int | None = None
    worker_died: str | None = None
    errors: list[str] = field(default_factory=list)


# --- publishing --------------------------------------------------------------------------------


def _properties() -> spec.Basic.Properties:
    return spec.Basic.Properties(delivery_mode=2, content_type="application/cloudevents+json")


async def publish_backlog(connection: AbstractConnection, config: ScaleConfig, timeout_s: float) -> int:
    """The whole backlog as campaign-ended events, persistent and confirmed; the events published."""
    channel = await connection.channel(publisher_confirms=True)
    try:
        underlay = await channel.get_underlay_channel()
        events = 0
        batch: list[bytes] = []
        for first in range(0, config.workflows, config.per_event):
            last = min(config.workflows, first + config.per_event)
            ids = [f"{BACKLOG_PREFIX}{n}" for n in range(first, last)]
            batch.append(encoded(campaign(ids, f"evt_rs_{first // config.per_event}")))
            if len(batch) >= 50 or last >= config.workflows:
                await asyncio.gather(
                    *(
                        underlay.basic_publish(
                            body,
                            exchange=INPUT_EXCHANGE,
                            routing_key="campaign-ended",
                            properties=_properties(),
                            timeout=timeout_s,
                        )
                        for body in batch
                    )
                )
                events += len(batch)
                batch = []
        return events
    finally:
        with contextlib.suppress(Exception):
            await channel.close()


async def publish_complaints(
    connection: AbstractConnection, config: ScaleConfig, outputs: Outputs, stop: asyncio.Event
) -> None:
    """One complaint naming one new workflow every `complaint_every_s` until `stop` is set."""
    channel = await connection.channel(publisher_confirms=True)
    try:
        underlay = await channel.get_underlay_channel()
        started = time.monotonic()
        n = 0
        while not stop.is_set():
            workflow_id = f"{URGENT_PREFIX}{n}"
            body = encoded(complaint([workflow_id], f"evt_urgent_{n}", complaint_id=f"cpl_urgent_{n}"))
            outputs.complaint_sent_at[workflow_id] = time.monotonic()
            await underlay.basic_publish(
                body,
                exchange=INPUT_EXCHANGE,
                routing_key="complaint-received",
                properties=_properties(),
                timeout=30,
            )
            n += 1
            due = started + n * config.complaint_every_s
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), max(0.0, due - time.monotonic()))
    finally:
        with contextlib.suppress(Exception):
            await channel.close()


async def bind_outputs(connection: AbstractConnection, outputs: Outputs) -> None:
    """A queue of the drill's own on the output exchange, consumed into `outputs`."""
    channel = await connection.channel()
    await channel.set_qos(prefetch_count=1_000)
    exchange = await channel.declare_exchange(OUTPUT_EXCHANGE, aio_pika.ExchangeType.TOPIC, durable=True)
    queue = await channel.declare_queue(OUTPUTS_QUEUE, durable=True)
    await queue.bind(exchange, OUTPUT_KEY)

    async def on_output(message: AbstractIncomingMessage) -> None:
        outputs.record(message.body, time.monotonic())

    await queue.consume(on_output, no_ack=True)


# --- the run -----------------------------------------------------------------------------------


def worker_settings(config: ScaleConfig) -> dict[str, str]:
    """The worker's CANCELLER_* settings for this run."""
    settings = {
        "CANCELLER_MAX_HOLD_S": f"{config.max_hold_s:g}",
        "CANCELLER_HTTP_CONNECT_TIMEOUT_S": f"{config.connect_timeout_s:g}",
        "CANCELLER_HTTP_READ_TIMEOUT_S": f"{config.read_timeout_s:g}",
        "CANCELLER_PUBLISH_TIMEOUT_S": f"{config.publish_timeout_s:g}",
        "CANCELLER_LOG_LEVEL": "WARNING",
    }
    if config.max_hold_s + RETRY_DELAY_MAX_S > TERMINAL_CACHE_TTL_S:
        settings["CANCELLER_TERMINAL_CACHE_TTL_S"] = f"{config.max_hold_s + RETRY_DELAY_MAX_S:g}"
    return settings


async def run_drill(config: ScaleConfig) -> Run:
    """One drill; never raises for a failed check (see `report`), cleans up on every path."""
    out_dir = RESULTS / f"real-scale-{stamp()}"
    run = Run(config, out_dir, Outputs(config.workflows))
    procs: list[Proc] = []
    async with Vhost("canceller-real-scale") as vhost:
        try:
            await _drill(config, vhost, run, procs)
        except DrillError as error:
            run.errors.append(str(error))
        finally:
            for proc in procs:
                code = await proc.stop(timeout_s=60)
                if proc.name == "worker":
                    run.worker_exit_code = code
    return run


async def _drill(config: ScaleConfig, vhost: Vhost, run: Run, procs: list[Proc]) -> None:
    flags = ["--rate-limit", str(config.limit), "--rate-window-s", f"{config.window_s:g}"]
    if config.window_s < 60:  # a time-compressed run: whole-second reset values would distort it
        flags += ["--reset-style", "fractional"]
    sim = await SimProcess.start(run.out_dir, *flags)
    procs.append(sim.proc)
    worker = await start_worker(vhost.url, sim.base_url, worker_settings(config), run.out_dir, procs)
    connection = await connect(vhost.url)
    stop = asyncio.Event()
    complaints: asyncio.Task[None] | None = None
    try:
        await bind_outputs(connection, run.outputs)  # before the first input: every output is kept
        started = time.monotonic()
        run.published_at = started
        run.outputs.last_progress_at = started
        await publish_backlog(connection, config, timeout_s=max(30.0, config.publish_timeout_s))
        complaints = asyncio.create_task(publish_complaints(connection, config, run.outputs, stop))
        await _watch(config, sim, worker, complaints, run)
        stop.set()
        await complaints
        await _wait_complaints(config, worker, run)
        run.worker_metrics = await metrics(worker.port or 0)
        run.dlq_depth = await queue_depth(connection, DLQ)
        run.sim_stats = await sim.stats()  # before the last pull: every call it counts is in the records
        await run.tally.pull(sim)
    finally:
        stop.set()
        if complaints is not None and not complaints.done():
            complaints.cancel()
        if complaints is not None:
            with contextlib.suppress(BaseException):
                await complaints
        with contextlib.suppress(Exception):
            await connection.close()


async def _watch(
    config: ScaleConfig, sim: SimProcess, worker: Proc, complaints: asyncio.Task[None], run: Run
) -> None:
    """Until drained, out of time, stalled, or the worker is gone; pull call records meanwhile."""
    assert run.published_at is not None  # noqa: S101  # set before the backlog is published
    limit_s = config.duration_s if config.duration_s is not None else config.deadline_s
    next_progress = time.monotonic() + PROGRESS_EVERY_S
    next_stats = time.monotonic()
    interval_s = min(0.2, config.complaint_every_s / 2)
    outputs = run.outputs
    while True:
        now = time.monotonic()
        if outputs.drained_at is not None:
            run.stopped = "drained"
            break
        if not worker.alive:
            run.worker_died = f"worker exited with {worker.process.returncode}: {worker.log_tail()}"
            run.stopped = "worker exited"
            break
        if complaints.done():
            error = complaints.exception()
            raise DrillError(f"publishing complaints failed: {error!r}")
        if now - run.published_at >= limit_s:
            run.stopped = "duration" if config.duration_s is not None else "deadline"
            break
        if now - outputs.last_progress_at >= config.stall_s:
            run.stopped = "stalled"
            break
        if now >= next_stats:  # cheap; the records only when the ring could wrap before the next look
            stats = await sim.stats()
            if int(stats.get("call_count", 0)) - run.tally.pulled_at_count >= PULL_EVERY_CALLS:
                await run.tally.pull(sim)
            next_stats = time.monotonic() + 2.0
        if now >= next_progress:
            print(
                f"real_scale: {now - run.published_at:.0f} s: {len(outputs.backlog)}/{config.workflows}"
                f" cancelled, {len(outputs.complaint_sent_at)} complaints sent"
                f" ({outputs.complaints_outstanding} outstanding)",
                file=sys.stderr,
                flush=True,
            )
            next_progress = now + PROGRESS_EVERY_S
        await asyncio.sleep(interval_s)
    run.stop_at = outputs.drained_at if outputs.drained_at is not None else time.monotonic()


async def _wait_complaints(config: ScaleConfig, worker: Proc, run: Run) -> None:
    """The complaints still outstanding get their events (bounded; a miss shows in the report)."""

    def answered() -> bool:
        return run.outputs.complaints_outstanding == 0 or not worker.alive

    with contextlib.suppress(DrillError):
        await wait_until(answered, timeout_s=max(10.0, 4 * config.max_hold_s), what="the last complaints")


# --- the report --------------------------------------------------------------------------------


def percentile(values: list[float], p: float) -> float | None:
    """Nearest-rank percentile of `values` (None when empty)."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)]


def machine_info() -> dict[str, Any]:
    """CPU model, cores, Python version, and the one-line description the other drills print."""
    model = "unknown"
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as cpuinfo:
        for line in cpuinfo:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return {
        "cpu_model": model,
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "description": machine(),
    }


def _round(value: float | None, digits: int = 3) -> float | None:
    return None if value is None else round(value, digits)


def report(run: Run, command: list[str]) -> dict[str, Any]:
    """The run's figures as JSON-ready data, with the list of failed checks."""
    config, outputs, tally = run.config, run.outputs, run.tally
    values = run.worker_metrics
    per_workflow = [tally.per_workflow.get(f"{BACKLOG_PREFIX}{n}", 0) for n in range(config.workflows)]
    latencies = list(outputs.latencies_s.values())
    elapsed_s = (run.stop_at - run.published_at) if run.stop_at and run.published_at else None
    limit_per_s = config.limit / config.window_s
    achieved = tally.calls_per_s()
    statuses = tally.backlog_statuses
    data: dict[str, Any] = {
        "drill": "real_scale",
        "command": shlex.join(command),
        "machine": machine_info(),
        "config": asdict(config),
        "stopped": run.stopped,
        "workflows": config.workflows,
        "workflows_cancelled": len(outputs.backlog),
        "elapsed_s": _round(elapsed_s, 2),
        "longest_hold_s": _round(values.get("canceller_delivery_hold_max_seconds")),
        "max_hold_s": config.max_hold_s,
        "calls_per_workflow": {
            "min": min(per_workflow, default=0),
            "max": max(per_workflow, default=0),
            "mean": _round(sum(per_workflow) / len(per_workflow) if per_workflow else None),
            "more_than_one": sum(1 for c in per_workflow if c > 1),
            "answered_200": statuses.get("200", 0),
            "answered_409": statuses.get("409", 0),
            "answered_429": statuses.get("429", 0),
            "answered_other": {k: v for k, v in sorted(statuses.items()) if k not in ("200", "409", "429")},
        },
        "calls": {
            "total": tally.counted,
            "by_status": dict(sorted(tally.all_statuses.items())),
            "records_lost": max(0, int(run.sim_stats.get("call_count", 0)) - tally.counted),
            "achieved_per_s": _round(achieved, 2),
            "limit_per_s": _round(limit_per_s, 2),
            "share_of_limit": _round(achieved / limit_per_s if achieved is not None else None),
            "simulator_call_count": run.sim_stats.get("call_count"),
            "simulator_max_inflight": run.sim_stats.get("max_inflight"),
        },
        "complaints_sent": len(outputs.complaint_sent_at),
        "complaint_latency_s": {
            "answered": len(latencies),
            "p50": _round(percentile(latencies, 50)),
            "p99": _round(percentile(latencies, 99)),
            "max": _round(max(latencies, default=None)),
        },
        "broker_reconnects": int(values.get("canceller_broker_reconnects_total", 0)) if values else None,
        "handed_off": int(metric_sum(values, "canceller_handed_off_total")) if values else None,
        "dlq_depth": run.dlq_depth,
        "outputs": {
            "received": outputs.received,
            "duplicate_backlog_events": outputs.duplicates,
            "unexpected": outputs.unexpected,
        },
        "worker_exit_code": run.worker_exit_code,
        "logs": str(run.out_dir),
    }
    data["problems"] = problems(run, data)
    return data


def problems(run: Run, data: dict[str, Any]) -> list[str]:
    """The checks that failed, one line each."""
    found = list(run.errors)
    if run.worker_died:
        found.append(run.worker_died)
    if data["workflows_cancelled"] < data["workflows"] and run.stopped != "duration":
        found.append(f"{data['workflows'] - data['workflows_cancelled']} backlog workflows never cancelled")
    calls = data["calls_per_workflow"]
    if calls["answered_409"]:
        found.append(f"{calls['answered_409']} cancel calls answered 409 (a workflow called again)")
    hold = data["longest_hold_s"]
    if hold is None:
        found.append("the worker's metrics could not be read at the end")
    elif hold > run.config.max_hold_s:
        found.append(f"a delivery was held {hold:g} s, above CANCELLER_MAX_HOLD_S={run.config.max_hold_s:g}")
    unanswered = data["complaints_sent"] - data["complaint_latency_s"]["answered"]
    if unanswered:
        found.append(f"{unanswered} complaints without their workflow-cancelled event")
    if data["dlq_depth"]:
        found.append(f"{data['dlq_depth']} messages in the DLQ")
    if data["broker_reconnects"]:
        found.append(f"{data['broker_reconnects']} broker reconnects (nothing cut the connection)")
    if data["calls"]["records_lost"]:
        found.append(f"{data['calls']['records_lost']} call records lost before they were counted")
    if run.worker_exit_code not in (0, None):
        found.append(f"worker exited with {run.worker_exit_code} on SIGTERM")
    return found


def summary_lines(data: dict[str, Any]) -> list[str]:
    """A short human summary of the report."""
    calls, lat, c = data["calls_per_workflow"], data["complaint_latency_s"], data["calls"]

    def num(value: float | None, unit: str = "") -> str:
        return "n/a" if value is None else f"{value:g}{unit}"

    return [
        f"real_scale: {data['workflows_cancelled']}/{data['workflows']} workflows cancelled in"
        f" {num(data['elapsed_s'], ' s')} ({data['stopped']}); {data['machine']['description']}",
        f"longest hold {num(data['longest_hold_s'], ' s')} (max hold {data['max_hold_s']:g} s);"
        f" handed off {num(data['handed_off'])}; broker reconnects {num(data['broker_reconnects'])};"
        f" DLQ {num(data['dlq_depth'])}",
        f"cancel calls per workflow: min {calls['min']}, max {calls['max']}, mean {num(calls['mean'])}"
        f" ({calls['more_than_one']} called more than once); 200: {calls['answered_200']},"
        f" 409: {calls['answered_409']}, 429: {calls['answered_429']}",
        f"API calls: {c['total']} at {num(c['achieved_per_s'], '/s')} against a limit of"
        f" {num(c['limit_per_s'], '/s')} ({num(c['share_of_limit'])} of it)",
        f"complaints: {data['complaints_sent']} sent, {lat['answered']} answered; latency p50"
        f" {num(lat['p50'], ' s')}, p99 {num(lat['p99'], ' s')}, max {num(lat['max'], ' s')}",
        "problems: " + ("; ".join(data["problems"]) if data["problems"] else "none"),
    ]


def main(argv: list[str] | None = None) -> int:
    """Run the drill, print its JSON and summary, exit 1 when a check failed."""
    parser = argparse.ArgumentParser(prog="python -m drills.real_scale", description=__doc__.splitlines()[0])
    defaults = ScaleConfig()
    parser.add_argument("--workflows", type=int, default=defaults.workflows, help="backlog workflows")
    parser.add_argument("--per-event", type=int, default=defaults.per_event, help="workflows per event")
    parser.add_argument("--limit", type=int, default=defaults.limit, help="API calls per window")
    parser.add_argument("--window-s", type=float, default=defaults.window_s, help="rate-limit window")
    parser.add_argument("--max-hold-s", type=float, default=defaults.max_hold_s, help="CANCELLER_MAX_HOLD_S")
    parser.add_argument("--complaint-every-s", type=float, default=defaults.complaint_every_s)
    parser.add_argument("--duration-s", type=float, default=None, help="stop after this long")
    parser.add_argument("--connect-timeout-s", type=float, default=defaults.connect_timeout_s)
    parser.add_argument("--read-timeout-s", type=float, default=defaults.read_timeout_s)
    parser.add_argument("--publish-timeout-s", type=float, default=defaults.publish_timeout_s)
    parser.add_argument("--out", type=Path, default=None, help="also write the JSON to this file")
    args = parser.parse_args(argv)
    config = ScaleConfig(
        workflows=args.workflows,
        per_event=args.per_event,
        limit=args.limit,
        window_s=args.window_s,
        max_hold_s=args.max_hold_s,
        complaint_every_s=args.complaint_every_s,
        duration_s=args.duration_s,
        connect_timeout_s=args.connect_timeout_s,
        read_timeout_s=args.read_timeout_s,
        publish_timeout_s=args.publish_timeout_s,
    )
    if config.workflows < 1 or not 1 <= config.per_event <= MAX_PER_EVENT or config.limit < 1:
        parser.error(f"--workflows and --limit must be at least 1, --per-event 1..{MAX_PER_EVENT}")
    timeouts = (config.connect_timeout_s, config.read_timeout_s, config.publish_timeout_s)
    if min(config.window_s, config.complaint_every_s, *timeouts) <= 0:
        parser.error("--window-s, --complaint-every-s and the timeouts must be positive")
    if config.max_hold_s < 2 * config.finish_margin_s:
        parser.error(
            f"--max-hold-s must be at least 2 * (connect + read + 2 * publish) ="
            f" {2 * config.finish_margin_s:g} s (the worker refuses to start otherwise)"
        )
    command = [PYTHON, "-m", "drills.real_scale", *(sys.argv[1:] if argv is None else argv)]
    started_at = datetime.now(UTC).isoformat(timespec="seconds")
    run = asyncio.run(run_drill(config))
    data = {"started_at": started_at, **report(run, command)}
    text = json.dumps(data, indent=2)
    print(text, flush=True)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
    print("\n".join(summary_lines(data)), file=sys.stderr, flush=True)
    return 1 if data["problems"] else 0


if __name__ == "__main__":
    raise SystemExit(main())
