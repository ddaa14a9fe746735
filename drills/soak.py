"""Soak: a steady load for a fixed time while the worker's RSS, open fds and asyncio tasks are sampled.

    python -m drills.soak                 # 2 minutes
    python -m drills.soak --long          # 30 minutes
    python -m drills.soak --minutes 10 --rate 250

Publishes events (campaign-ended with 1-3 workflows, complaint-received with 1) at a fixed rate to
a vhost of the run's own, where one worker process (`python -m service run`) cancels them against
the simulator (its own process).
Every `interval` it samples the worker's VmRSS and thread count (/proc/<pid>/status), its open
file descriptors (/proc/<pid>/fd), its asyncio tasks (`canceller_asyncio_tasks`), messages processed (its
/metrics) and the input backlog. After the load it waits, with a deadline, until every published
event is processed. Growth is the slope of a least-squares line over the second half of the
samples, against messages processed, per 100,000 messages. Samples go to a CSV and a markdown file.
Exit code 1 when the worker died, did not process every event, or its fds grew.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import csv
import random
import time
import uuid
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import aio_pika
from pamqp import commands as spec
from pydantic import SecretStr

from drills.common import (
    RESULTS,
    DrillError,
    Vhost,
    connect,
    cpu_seconds,
    machine,
    metric_sum,
    metrics,
    open_fds,
    proc_status,
    queue_depth,
    sockets_to,
    stamp,
    start_worker,
)
from testkit import Proc, SimProcess, campaign, complaint, encoded, wait_until
from testkit.processes import API_KEY

TASKS_GAUGE = "canceller_asyncio_tasks"  # the worker's own gauge of tasks alive in its loop
OUTPUTS_QUEUE = "soak.outputs"
FD_GROWTH_LIMIT_PER_100K = 10.0  # more than this many fds per 100,000 messages is a leak


@dataclass(frozen=True)
class SoakConfig:
    minutes: float = 2.0
    # Events per second (1.6 workflows each): on a quiet 2-core VM the worker takes about half a
    # core at 300/s without a backlog, the broker and the simulator most of the rest.
    rate: float = 300.0
    interval_s: float = 1.0
    terminal_cache_size: int | None = None  # None: the service's default
    out_dir: Path | None = None
    drain_timeout_s: float | None = None  # None: 5 minutes, or half the load time if longer


@dataclass
class Sample:
    t_s: float
    published: int
    processed: int
    backlog: int
    rss_kib: int
    threads: int
    fds: int
    http_fds: int  # of those, connections to the DialNexa API (its pool: at most the concurrency)
    tasks: int
    worker_cpu_pct: float


@dataclass
class SoakResult:
    config: SoakConfig
    samples: list[Sample] = field(default_factory=list)
    published: int = 0
    processed: int = 0
    drain_s: float | None = None
    peak_rss_kib: int = 0
    exit_code: int | None = None
    problems: list[str] = field(default_factory=list)
    growth_per_100k: dict[str, float | None] = field(default_factory=dict)
    csv_path: Path | None = None
    md_path: Path | None = None
    started_at: str = ""
    wall_s: float = 0.0

    def second_half(self) -> list[Sample]:
        if not self.samples:
            return []
        end = self.samples[-1].t_s
        load_end = min(end, self.config.minutes * 60)
        return [s for s in self.samples if load_end / 2 <= s.t_s <= load_end]


def slope(xs: list[float], ys: list[float]) -> float | None:
    """Least-squares slope of ys against xs (None with fewer than 3 points or no spread in xs)."""
    if len(xs) < 3:
        return None
    mean_x, mean_y = sum(xs) / len(xs), sum(ys) / len(ys)
    var = sum((x - mean_x) ** 2 for x in xs)
    if var == 0:
        return None
    return sum((x - mean_x) * (y - mean_y) for x, y in zip(xs, ys, strict=True)) / var


def event_body(rng: random.Random, tag: str, n: int) -> tuple[str, bytes]:
    """(routing key, body) of the n-th soak event, naming unique workflows."""
    event_id = f"evt_soak_{tag}_{n}"
    if rng.random() < 0.8:
        ids = [f"wf_soak_{tag}_{n}_{k}" for k in range(rng.randint(1, 3))]
        event = campaign(ids, event_id, campaign_id=f"cmp_{n % 97}")
    else:
        event = complaint([f"wfl_soak_{tag}_{n}"], event_id, None, complaint_id=f"cpl_{n}", campaign_id=None)
    return str(event["type"]), encoded(event)


async def _declare(url: str) -> None:
    """The service's own topology (so the worker's declaration matches) plus a bounded output sink."""
    from service.broker import topology
    from service.config import Settings

    connection = await connect(url)
    try:
        channel = await connection.channel()
        settings = Settings(
            _env_file=None,  # type: ignore[call-arg]  # pydantic-settings' init-only option
            dialnexa_api_key=SecretStr(API_KEY),
        )
        await topology.declare(channel, settings)
        sink = await channel.declare_queue(
            OUTPUTS_QUEUE, durable=True, arguments={"x-queue-type": "classic", "x-max-length": 10_000}
        )
        await sink.bind(settings.output_exchange, settings.output_routing_key)
    finally:
        await connection.close()


class Publisher:
    """Publishes at a fixed rate (persistent, confirmed), in small batches every tick."""

    def __init__(self, url: str, rate: float, seed: int) -> None:
        self.url = url
        self.rate = rate
        self.published = 0
        self._rng = random.Random(seed)  # noqa: S311  # test data, not crypto
        self._tag = uuid.uuid4().hex[:6]

    async def run(self, duration_s: float) -> None:
        connection = await connect(self.url)
        try:
            channel = await connection.channel(publisher_confirms=True)
            underlay = await channel.get_underlay_channel()
            props = spec.Basic.Properties(delivery_mode=2, content_type="application/cloudevents+json")
            started = time.monotonic()
            tick_s = 0.05
            while (elapsed := time.monotonic() - started) < duration_s:
                due = int(elapsed * self.rate) - self.published
                batch = [event_body(self._rng, self._tag, self.published + i) for i in range(max(0, due))]
                if batch:
                    await asyncio.gather(
                        *(
                            underlay.basic_publish(
                                body, exchange="crm.events", routing_key=key, properties=props
                            )
                            for key, body in batch
                        )
                    )
                    self.published += len(batch)
                await asyncio.sleep(tick_s)
        finally:
            await connection.close()


async def run_soak(config: SoakConfig) -> SoakResult:
    """Run one soak; never raises for a failed check (see `problems`), cleans up on every path."""
    result = SoakResult(config, started_at=datetime.now(UTC).isoformat(timespec="seconds"))
    out_dir = config.out_dir or RESULTS / f"soak-{stamp()}"
    wall_started = time.monotonic()
    procs: list[Proc] = []
    async with Vhost("canceller-soak") as vhost:
        try:
            await _soak(config, vhost, out_dir, procs, result)
        except DrillError as error:
            result.problems.append(str(error))
        finally:
            for proc in procs:
                code = await proc.stop()
                if proc.name == "worker":
                    result.exit_code = code
    if result.exit_code not in (0, None):
        result.problems.append(f"worker exited with {result.exit_code} on SIGTERM")
    result.wall_s = time.monotonic() - wall_started
    _fit(result)
    _write(result, out_dir)
    return result


async def _soak(
    config: SoakConfig, vhost: Vhost, out_dir: Path, procs: list[Proc], result: SoakResult
) -> None:
    await _declare(vhost.url)
    sim = await SimProcess.start(out_dir)
    procs.append(sim.proc)
    extra = {"CANCELLER_DRAIN_TIMEOUT_S": "10"}
    if config.terminal_cache_size is not None:
        extra["CANCELLER_TERMINAL_CACHE_SIZE"] = str(config.terminal_cache_size)
    worker = await start_worker(vhost.url, sim.base_url, extra, out_dir, procs)
    probe = await connect(vhost.url)
    try:
        publisher = Publisher(vhost.url, config.rate, seed=1)
        sampler = asyncio.create_task(_sample_until_cancelled(config, sim, worker, probe, publisher, result))
        try:
            duration_s = config.minutes * 60
            await publisher.run(duration_s)
            result.published = publisher.published
            drain_started = time.monotonic()

            async def drained() -> bool:
                if not worker.alive:
                    raise DrillError(f"worker died: {worker.log_tail()}")
                return bool(result.samples) and result.samples[-1].processed >= publisher.published

            drain_timeout_s = config.drain_timeout_s or max(300.0, duration_s / 2)
            await wait_until(drained, timeout_s=drain_timeout_s, what="every published event processed")
            result.drain_s = time.monotonic() - drain_started
        finally:
            sampler.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sampler
        result.processed = result.samples[-1].processed if result.samples else 0
        result.peak_rss_kib = proc_status(worker.pid).get("VmHWM", 0)
    finally:
        await probe.close()


async def _sample_until_cancelled(
    config: SoakConfig,
    sim: SimProcess,
    worker: Proc,
    probe: aio_pika.abc.AbstractConnection,
    publisher: Publisher,
    result: SoakResult,
) -> None:
    started = time.monotonic()
    last_cpu, last_t = cpu_seconds(worker.pid), started
    sim_port = sim.proc.port or 0
    assert worker.port is not None  # noqa: S101  # set at spawn
    while True:  # ends when cancelled by the caller
        values = await metrics(worker.port)
        status = proc_status(worker.pid)
        now = time.monotonic()
        cpu = cpu_seconds(worker.pid)
        backlog = 0
        for queue in ("workflow-canceller.campaign-ended", "workflow-canceller.complaint-received"):
            backlog += await queue_depth(probe, queue)
        if values and status:
            result.samples.append(
                Sample(
                    t_s=round(now - started, 2),
                    published=publisher.published,
                    processed=int(metric_sum(values, "canceller_events_processed_total")),
                    backlog=backlog,
                    rss_kib=status.get("VmRSS", 0),
                    threads=status.get("Threads", 0),
                    fds=open_fds(worker.pid) or 0,
                    http_fds=sockets_to(worker.pid, sim_port),
                    tasks=int(values.get(TASKS_GAUGE, 0)),
                    worker_cpu_pct=round(100 * (cpu - last_cpu) / max(1e-9, now - last_t), 1),
                )
            )
        last_cpu, last_t = cpu, now
        await asyncio.sleep(max(0.0, config.interval_s - (time.monotonic() - now)))


def _fit(result: SoakResult) -> None:
    half = result.second_half()
    xs = [float(s.processed) for s in half]
    for name in ("rss_kib", "fds", "http_fds", "tasks", "threads"):
        k = slope(xs, [float(getattr(s, name)) for s in half])
        result.growth_per_100k[name] = None if k is None else k * 100_000
    fd_growth = result.growth_per_100k.get("fds")
    # A leak is a trend, not one more socket at the last sample: both the fitted rate and the
    # fitted rise over the second half must be large (on a short run one fd is a steep slope).
    rise = None if fd_growth is None or not xs else fd_growth * (max(xs) - min(xs)) / 100_000
    if fd_growth is not None and rise is not None and fd_growth > FD_GROWTH_LIMIT_PER_100K and rise >= 3:
        result.problems.append(
            f"open fds grew by {fd_growth:.1f} per 100,000 messages ({rise:.1f} in the second half)"
        )
    if result.processed < result.published:
        result.problems.append(f"only {result.processed} of {result.published} events processed")


def _write(result: SoakResult, out_dir: Path) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    result.csv_path = out_dir / "samples.csv"
    with result.csv_path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(Sample.__dataclass_fields__))
        writer.writeheader()
        for sample in result.samples:
            writer.writerow(asdict(sample))
    result.md_path = out_dir / "soak.md"
    result.md_path.write_text(markdown(result))


def summary_lines(result: SoakResult) -> list[str]:
    """The figures of one soak, as printed."""
    c, g = result.config, result.growth_per_100k
    half = result.second_half()

    def rng(name: str, samples: list[Sample], scale: float = 1) -> str:
        values = [getattr(s, name) / scale for s in samples]
        return f"{min(values):g}..{max(values):g}" if values else "n/a"

    def fmt(value: float | None, unit: str) -> str:
        return "n/a" if value is None else f"{value:+.1f} {unit}"

    rate = result.processed / (c.minutes * 60) if c.minutes else 0
    rss = g.get("rss_kib")
    return [
        f"soak: {c.minutes:g} min at {c.rate:g} events/s (started {result.started_at}; {machine()})",
        f"published {result.published}, processed {result.processed} ({rate:.0f}/s), "
        f"drain after load {result.drain_s or 0:.1f} s, wall {result.wall_s:.0f} s",
        f"samples: {len(result.samples)} every {c.interval_s:g} s; second half: {len(half)}",
        f"RSS MiB: first {(result.samples[0].rss_kib if result.samples else 0) / 1024:.1f}, "
        f"peak (VmHWM) {result.peak_rss_kib / 1024:.1f}; second half {rng('rss_kib', half, 1024)}",
        f"open fds: all {rng('fds', result.samples)}, second half {rng('fds', half)} "
        f"(of which DialNexa connections {rng('http_fds', half)}); "
        f"threads {rng('threads', result.samples)}; asyncio tasks {rng('tasks', result.samples)}",
        f"max backlog {max((s.backlog for s in result.samples), default=0)} messages; "
        f"worker CPU {sum(s.worker_cpu_pct for s in half) / max(1, len(half)):.0f} % of a core (second half)",
        "growth per 100,000 messages (least squares over the second half): "
        f"RSS {fmt(None if rss is None else rss / 1024, 'MiB')}, "
        f"fds {fmt(g.get('fds'), '')} (DialNexa connections {fmt(g.get('http_fds'), '')}), "
        f"tasks {fmt(g.get('tasks'), '')}, threads {fmt(g.get('threads'), '')}",
        f"worker exit code on SIGTERM: {result.exit_code}",
        f"samples: {result.csv_path}",
        "problems: " + ("; ".join(result.problems) if result.problems else "none"),
    ]


def markdown(result: SoakResult) -> str:
    """The summary and (at most about 60 of) the samples as a markdown page."""
    lines = ["# Soak", "", *[f"- {line}" for line in summary_lines(result)[:-2]], ""]
    lines += [
        "| t s | published | processed | backlog | RSS KiB | fds | to DialNexa | tasks | threads "
        "| worker CPU % |"
    ]
    lines += ["|---|---|---|---|---|---|---|---|---|---|"]
    step = max(1, len(result.samples) // 60)
    for s in result.samples[::step]:
        lines.append(
            f"| {s.t_s} | {s.published} | {s.processed} | {s.backlog} | {s.rss_kib} | {s.fds} "
            f"| {s.http_fds} | {s.tasks} | {s.threads} | {s.worker_cpu_pct} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    """Run the soak, print its figures, exit 1 when a check failed."""
    parser = argparse.ArgumentParser(prog="python -m drills.soak", description=__doc__.splitlines()[0])
    parser.add_argument("--long", action="store_true", help="30 minutes")
    parser.add_argument("--minutes", type=float, default=None, help="load duration (default 2)")
    parser.add_argument("--rate", type=float, default=SoakConfig.rate, help="events per second")
    parser.add_argument("--interval", type=float, default=None, help="seconds between samples")
    parser.add_argument("--out", type=Path, default=None, help="directory for samples and logs")
    args = parser.parse_args(argv)
    minutes = args.minutes if args.minutes is not None else (30.0 if args.long else 2.0)
    interval = args.interval if args.interval is not None else (5.0 if minutes >= 10 else 1.0)
    config = SoakConfig(minutes=minutes, rate=args.rate, interval_s=interval, out_dir=args.out)
    result = asyncio.run(run_soak(config))
    print("\n".join(summary_lines(result)), flush=True)
    return 1 if result.problems else 0


if __name__ == "__main__":
    raise SystemExit(main())
