"""Benchmark plumbing: a broker vhost and per-trial names, preloading, the worker / raw-loop /
simulator processes, RSS sampling and output counting.

Everything binds or connects to loopback only. Every wait is bounded by a deadline.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import statistics
import sys
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aio_pika
from pamqp import commands as spec

from drills.common import cpu_seconds, machine_busy_seconds, proc_status
from testkit import (
    HOST,
    PYTHON,
    ROOT,
    HarnessError,
    Proc,
    campaign,
    encoded,
    processes,
    run_cmd,
    spawn_worker,
)
from testkit.processes import API_KEY

RESULTS = ROOT / "bench" / "results"
LOGS = RESULTS / "logs"
AMQP_BASE = f"amqp://guest:guest@{HOST}:5672/"
OUTPUT_KEY = "workflow-cancelled"

if str(ROOT) not in sys.path:  # `service` is imported for its topology, so queue arguments match
    sys.path.insert(0, str(ROOT))


class BenchError(HarnessError):
    """A trial could not run or finish (the scenario records it and goes on, as for any
    `HarnessError` the shared helpers raise)."""


def summary(values: Iterable[float | None]) -> dict[str, float | int | None]:
    """Median and min-max of the values that exist."""
    vals = [v for v in values if v is not None]
    if not vals:
        return {"median": None, "min": None, "max": None, "n": 0}
    return {"median": statistics.median(vals), "min": min(vals), "max": max(vals), "n": len(vals)}


def summaries(runs: list[dict[str, Any]], *keys: str) -> dict[str, dict[str, float | int | None]]:
    """`summary` of each key over the runs (a run without the key counts as missing)."""
    return {key: summary(run.get(key) for run in runs) for key in keys}


def write_json(name: str, data: Any) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{datetime.now(UTC):%Y%m%dT%H%M%S}-{name}.json"
    path.write_text(json.dumps(data, indent=2, default=str))
    return path


# --- events ------------------------------------------------------------------------------------


def single_workflow_events(count: int, tag: str) -> list[bytes]:
    """`count` campaign-ended events naming one unique workflow each."""
    return [encoded(campaign([f"wf_{tag}_{n}"], f"evt_{tag}_{n}")) for n in range(count)]


# --- broker ------------------------------------------------------------------------------------


def names_for(prefix: str) -> dict[str, str]:
    """Every configurable name of the service (Settings field -> name) under one prefix."""
    return {
        "input_exchange": f"{prefix}crm.events",
        "campaign_queue": f"{prefix}campaign-ended",
        "complaint_queue": f"{prefix}complaint-received",
        "output_exchange": f"{prefix}workflow.events",
        "dead_letter_queue": f"{prefix}dlq",
        "dead_letter_exchange": f"{prefix}dead-letter",
        "requeue_exchange": f"{prefix}requeue",
        "delay_queue_prefix": f"{prefix}delay",
    }


class Broker:
    """One connection to a vhost of this run's own (or `/` when rabbitmqctl cannot make one)."""

    def __init__(self) -> None:
        self.vhost: str | None = None
        self.url = AMQP_BASE
        self._connection: aio_pika.abc.AbstractConnection | None = None
        self._probe: aio_pika.abc.AbstractChannel | None = None

    async def open(self) -> None:
        vhost = f"bench-{uuid.uuid4().hex[:8]}"
        code, _ = await run_cmd("rabbitmqctl", "-q", "add_vhost", vhost)
        if code == 0:
            code, _ = await run_cmd(
                "rabbitmqctl", "-q", "set_permissions", "-p", vhost, "guest", ".*", ".*", ".*"
            )
            self.vhost, self.url = vhost, AMQP_BASE + vhost
        self._connection = await aio_pika.connect(self.url, timeout=10)

    async def close(self) -> None:
        if self._connection is not None:
            with contextlib.suppress(Exception):
                await self._connection.close()
        if self.vhost is not None:
            await run_cmd("rabbitmqctl", "-q", "delete_vhost", self.vhost)

    @property
    def connection(self) -> aio_pika.abc.AbstractConnection:
        if self._connection is None:
            raise BenchError("broker not open")
        return self._connection

    async def server_version(self) -> str:
        props = getattr(getattr(self.connection, "transport", None), "connection", None)
        server = getattr(props, "server_properties", {}) or {}
        version = server.get("version", "")
        return version.decode() if isinstance(version, bytes) else str(version)

    async def depth(self, queue: str) -> int:
        """Messages ready in `queue` (passive declare on a long-lived probe channel)."""
        if self._probe is None or self._probe.is_closed:
            self._probe = await self.connection.channel()
        underlay = await self._probe.get_underlay_channel()
        result = await underlay.queue_declare(queue, passive=True)
        return int(result.message_count or 0)

    async def preload(self, exchange: str, routing_key: str, bodies: list[bytes], batch: int = 500) -> float:
        """Publish every body (persistent, confirmed) in batches; returns messages per second.

        Straight through aiormq (aio-pika's Message objects cost about twice as much CPU here)."""
        started = time.perf_counter()
        channel = await self.connection.channel(publisher_confirms=True)
        props = spec.Basic.Properties(delivery_mode=2, content_type="application/cloudevents+json")
        try:
            underlay = await channel.get_underlay_channel()
            for first in range(0, len(bodies), batch):
                await asyncio.wait_for(
                    asyncio.gather(
                        *(
                            underlay.basic_publish(
                                body, exchange=exchange, routing_key=routing_key, properties=props
                            )
                            for body in bodies[first : first + batch]
                        )
                    ),
                    60,
                )
        finally:
            await channel.close()
        return len(bodies) / max(1e-9, time.perf_counter() - started)


class Trial:
    """One trial's names: the service's topology plus an output-counting queue; deleted at exit."""

    def __init__(self, broker: Broker) -> None:
        self.broker = broker
        self.tag = uuid.uuid4().hex[:8]
        self.names = names_for(f"bench-{self.tag}.")
        self.outputs = f"bench-{self.tag}.outputs"
        self._queues: list[str] = []
        self._exchanges: list[str] = []

    async def __aenter__(self) -> Trial:
        # The service's own declaration, so queue arguments match and the worker's declare succeeds.
        from service.broker import topology
        from service.config import Settings

        settings = Settings(dialnexa_api_key=API_KEY, **self.names)  # type: ignore[arg-type]
        channel = await self.broker.connection.channel()
        try:
            await topology.declare(channel, settings)
            queue = await channel.declare_queue(
                self.outputs, durable=False, arguments={"x-queue-type": "classic"}
            )
            await queue.bind(self.names["output_exchange"], OUTPUT_KEY)
        finally:
            await channel.close()
        steps = sorted(set(settings.retry_delays))
        self._queues = [
            self.outputs,
            self.names["campaign_queue"],
            self.names["complaint_queue"],
            self.names["dead_letter_queue"],
            *(settings.delay_queue_name(s) for s in steps),
        ]
        self._exchanges = [self.names[k] for k in self.names if k.endswith("_exchange")]
        return self

    async def __aexit__(self, *_: object) -> None:
        for name in self._queues:
            await self._delete(name, queue=True)
        for name in self._exchanges:
            await self._delete(name, queue=False)

    async def _delete(self, name: str, *, queue: bool) -> None:
        with contextlib.suppress(Exception):
            channel = await self.broker.connection.channel()
            try:
                if queue:
                    await channel.queue_delete(name)
                else:
                    await channel.exchange_delete(name)
            finally:
                await channel.close()

    def env(self) -> dict[str, str]:
        return {f"CANCELLER_{k.upper()}": v for k, v in self.names.items()}

    async def preload_campaigns(self, bodies: list[bytes]) -> float:
        rate = await self.broker.preload(self.names["input_exchange"], "campaign-ended", bodies)
        depth = await self.broker.depth(self.names["campaign_queue"])
        if depth != len(bodies):
            raise BenchError(f"preload: {depth} of {len(bodies)} messages in the input queue")
        return rate


# --- processes ---------------------------------------------------------------------------------


def _log_name(name: str) -> str:
    """A log file of each process's own, so a trial's result can point at it."""
    return f"{datetime.now(UTC):%Y%m%dT%H%M%S}-{name}-{uuid.uuid4().hex[:4]}.log"


async def spawn(name: str, argv: list[str], env: dict[str, str]) -> Proc:
    return await processes.spawn(name, argv, env, LOGS, log_name=_log_name(name))


async def start_worker(
    broker: Broker, trial: Trial, base_url: str, extra: dict[str, str] | None = None, name: str = "worker"
) -> Proc:
    """A worker process on this trial's names (not yet waited on)."""
    env = {
        # WARNING as the benchmarks run the worker; BENCH_WORKER_LOG_LEVEL=INFO measures the
        # per-workflow log lines an operator gets by default.
        "CANCELLER_LOG_LEVEL": os.environ.get("BENCH_WORKER_LOG_LEVEL", "WARNING"),
        "CANCELLER_DRAIN_TIMEOUT_S": "3",
        **trial.env(),
        **(extra or {}),
    }
    return await spawn_worker(broker.url, base_url, env, LOGS, name, _log_name(name))


async def start_raw_loop(
    broker: Broker, trial: Trial, base_url: str, prefetch: int, concurrency: int, loop: str = "uvloop"
) -> Proc:
    argv = [
        PYTHON, "-m", "bench.raw_loop",
        "--amqp-url", broker.url,
        "--queue", trial.names["campaign_queue"],
        "--output-exchange", trial.names["output_exchange"],
        "--base-url", base_url,
        "--api-key", API_KEY,
        "--prefetch", str(prefetch),
        "--concurrency", str(concurrency),
        "--loop", loop,
    ]  # fmt: skip
    return await spawn("raw-loop", argv, {})


# --- measuring ---------------------------------------------------------------------------------


@dataclass
class RssSampler:
    """Samples VmRSS of some processes every `interval_s`, tagged with the current progress."""

    pids: list[int]
    progress: Callable[[], int]
    interval_s: float = 0.5
    samples: list[dict[str, Any]] = field(default_factory=list)
    _task: asyncio.Task[None] | None = None
    _started: float = 0.0

    def start(self) -> None:
        self._started = time.monotonic()
        self._task = asyncio.create_task(self._run())

    def _sample(self) -> None:
        rss = {pid: proc_status(pid).get("VmRSS", 0) for pid in self.pids}
        self.samples.append(
            {"t": round(time.monotonic() - self._started, 2), "done": self.progress(), "rss_kib": rss}
        )

    async def _run(self) -> None:
        while True:  # bounded by stop(), which every caller reaches in a finally
            self._sample()
            await asyncio.sleep(self.interval_s)

    async def stop(self) -> dict[int, int]:
        """Stop sampling (one last sample first); returns VmHWM (peak RSS, KiB) of each process."""
        hwm = {pid: proc_status(pid).get("VmHWM", 0) for pid in self.pids}
        if self._task is not None and not self._task.done():
            self._sample()
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        return hwm

    def max_rss_kib(self) -> int:
        return max((sum(s["rss_kib"].values()) for s in self.samples), default=0)


@dataclass
class Drain:
    """Output-queue depth over time while a backlog drains."""

    target: int
    samples: list[tuple[float, int]] = field(default_factory=list)
    completed: bool = False
    gave_up: str | None = None

    @property
    def count(self) -> int:
        return self.samples[-1][1] if self.samples else 0

    def rate(self) -> float | None:
        """Events per second from the first output seen to the last sample (start-up excluded)."""
        started = next(((t, c) for t, c in self.samples if c > 0), None)
        if started is None or not self.samples or self.samples[-1][0] <= started[0]:
            return None
        (t0, c0), (t1, c1) = started, self.samples[-1]
        return (c1 - c0) / (t1 - t0)

    def seconds(self) -> float | None:
        started = next((t for t, c in self.samples if c > 0), None)
        return None if started is None else self.samples[-1][0] - started


async def watch_outputs(
    broker: Broker,
    queue: str,
    drain: Drain,
    procs: list[Proc],
    deadline_s: float,
    until: int | None = None,
    interval_s: float = 0.05,
    stall_s: float = 30,
) -> Drain:
    """Poll the output queue's depth into `drain` until `until` (default: its target), a deadline,
    a stall, or a process dies (the last three set `drain.gave_up`)."""
    target = drain.target if until is None else until
    started = last_change = time.monotonic()
    while True:
        now = time.monotonic()
        count = await broker.depth(queue)
        if count != drain.count:
            last_change = now
        drain.samples.append((now, count))
        if count >= target:
            drain.completed = count >= drain.target
            return drain
        dead = [p for p in procs if not p.alive]
        if dead:
            drain.gave_up = f"{dead[0].name} exited with {dead[0].process.returncode}: {dead[0].log_tail()}"
            return drain
        if now - started > deadline_s:
            drain.gave_up = f"deadline {deadline_s:.0f}s reached at {count}/{drain.target}"
            return drain
        if now - last_change > stall_s:
            drain.gave_up = f"no progress for {stall_s:.0f}s at {count}/{drain.target}"
            return drain
        await asyncio.sleep(interval_s)


def broker_pids() -> list[int]:
    """The RabbitMQ Erlang VM (beam.smp) processes on this machine."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                if (entry / "comm").read_text().strip().startswith("beam"):
                    pids.append(int(entry.name))
    return pids


class CpuMeter:
    """CPU used between start() and stop(), in % of one core: each named group of processes, this
    harness, and `other` (everything else on the machine, e.g. someone else's test run)."""

    def __init__(self, pids: dict[str, list[int]]) -> None:
        self.pids = pids
        self._start: dict[str, float] = {}
        self._t0 = 0.0

    def _now(self) -> dict[str, float]:
        used = {name: sum(cpu_seconds(p) for p in pids) for name, pids in self.pids.items()}
        times = os.times()
        used["harness"] = times.user + times.system
        used["machine"] = machine_busy_seconds()
        return used

    def start(self) -> None:
        self._start, self._t0 = self._now(), time.monotonic()

    def stop(self) -> dict[str, float]:
        end, elapsed = self._now(), max(1e-9, time.monotonic() - self._t0)
        used = {name: 100 * (end[name] - self._start.get(name, 0.0)) / elapsed for name in end}
        machine = used.pop("machine")
        used["other"] = max(0.0, machine - sum(used.values()))
        return {name: round(value, 1) for name, value in used.items()}


async def wait_for_quiet(max_wait_s: float, busy_pct: float = 25.0) -> float:
    """Wait (at most `max_wait_s`) until the machine is nearly idle over 2 s; returns its busy %."""
    deadline = time.monotonic() + max_wait_s
    while True:
        before, t0 = machine_busy_seconds(), time.monotonic()
        await asyncio.sleep(2)
        busy = 100 * (machine_busy_seconds() - before) / (time.monotonic() - t0)
        if busy <= busy_pct or time.monotonic() > deadline:
            return round(busy, 1)
