"""The scenarios of the benchmark issue (a to e). Each returns a JSON-ready dict and writes it to
bench/results/. A trial that cannot finish gives up after its deadline and records why.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path
from typing import Any, get_args

import aio_pika
from aio_pika.abc import AbstractIncomingMessage

from testkit import (
    HarnessError,
    SimProcess,
    campaign,
    complaint,
    encoded,
    simulator_in_process,
    wait_answering,
    wait_until,
)

from . import harness as h
from .harness import BenchError, Broker, Drain, Proc, Trial


@dataclass(frozen=True)
class Config:
    """Sizes and durations of every scenario.

    The defaults fit `make bench` into about 10 minutes on the 2-core benchmark machine and use the
    issue's sizes for a and e (20,000 and 100,000 events); `large()` also runs longer versions of
    the other scenarios (larger matrix and profile, 30 s for c, 20 s for d) and takes about twice
    as long; `quick()` is a smoke run.
    """

    size: str = "default"
    runs: int = 3
    a_events: int = 20_000
    a_matrix_events: int = 1_000
    a_profile_events: int = 6_000
    http_seconds: float = 2.0
    http_concurrency: int = 100
    b_events: int = 4_000
    b_latency_ms: float = 100.0
    b_concurrency: int = 64
    c_limit: int = 500
    c_window_s: float = 10.0
    c_seconds: float = 20.0
    d_limit: int = 20
    d_window_s: float = 1.0
    d_backlog_events: int = 100
    d_ids_per_event: int = 100
    d_warmup_s: float = 2.0
    d_seconds: float = 15.0
    d_interval_s: float = 0.5
    e_events: int = 100_000
    e_runs: int = 1

    @classmethod
    def large(cls, runs: int = 3) -> Config:
        return cls(
            size="large",
            runs=runs,
            a_events=20_000,
            a_matrix_events=10_000,
            a_profile_events=10_000,
            http_seconds=3.0,
            b_events=6_400,
            c_seconds=30.0,
            d_seconds=20.0,
            e_events=100_000,
        )

    @classmethod
    def quick(cls, runs: int = 1) -> Config:
        return cls(
            size="quick",
            runs=runs,
            a_events=2_000,
            a_matrix_events=1_000,
            a_profile_events=2_000,
            http_seconds=1.0,
            b_events=640,
            c_limit=50,
            c_window_s=1.0,
            c_seconds=4.0,
            d_backlog_events=20,
            d_seconds=4.0,
            d_warmup_s=1.0,
            e_events=5_000,
            e_runs=1,
        )


@dataclass
class Ctx:
    cfg: Config
    broker: Broker
    sim: SimProcess


def percentile(values: list[float], q: float) -> float | None:
    """Nearest-rank percentile (q in 0..1)."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


def service_prefetch(concurrency: int) -> int:
    """The prefetch the service uses at this concurrency (so the raw loop can use the same)."""
    from service.config import Settings

    settings = Settings(dialnexa_api_key=h.API_KEY, concurrency=concurrency)  # type: ignore[arg-type]
    return int(getattr(settings, "prefetch", concurrency))


def setting_choices(name: str, fallback: tuple[str, ...]) -> tuple[str, ...]:
    """The values a Literal setting of the service accepts (the fallback if it has no such setting)."""
    from service.config import Settings

    field = Settings.model_fields.get(name)
    choices = tuple(str(c) for c in get_args(field.annotation)) if field is not None else ()
    return choices or fallback


def setting_default(name: str) -> Any:
    """The service's default for one setting (None when the service has no such setting)."""
    from service.config import Settings

    field = Settings.model_fields.get(name)
    return None if field is None else field.default


async def guarded(what: str, trial: Callable[[], Awaitable[dict[str, Any]]]) -> dict[str, Any]:
    """Run one trial; a failure is recorded (with its reason), not raised."""
    started = time.monotonic()
    try:
        result = await trial()
    except (HarnessError, OSError, TimeoutError, aio_pika.exceptions.AMQPException) as error:
        result = {"error": f"{type(error).__name__}: {error}"[:500]}
    result["trial"] = what
    result["wall_s"] = round(time.monotonic() - started, 1)
    print(f"  {what}: {_brief(result)}", flush=True)
    return result


def _brief(result: dict[str, Any]) -> str:
    if "error" in result:
        return "FAILED " + str(result["error"])
    keys = ("events_per_s", "peak_rss_mib", "share_used", "share_429", "p50_s", "p99_s", "gave_up", "wall_s")
    return ", ".join(f"{k}={_round(result[k])}" for k in keys if result.get(k) is not None)


def _round(value: Any) -> Any:
    return round(value, 3) if isinstance(value, float) else value


# --- drain trials: a backlog of one-workflow events, then a worker (or the raw loop) -----------


async def drain_trial(
    ctx: Ctx,
    kind: str,
    events: int,
    *,
    concurrency: int = 16,
    env: dict[str, str] | None = None,
    profile_to: Path | None = None,
    rss_interval_s: float = 0.5,
) -> dict[str, Any]:
    """Preload `events`, start the worker (`kind="service"`) or raw loop, time the drain."""
    async with Trial(ctx.broker) as trial:
        preload_rate = await trial.preload_campaigns(h.single_workflow_events(events, trial.tag))
        await ctx.sim.reset()
        spawned = time.monotonic()
        if kind == "raw":
            proc = await h.start_raw_loop(
                ctx.broker, trial, ctx.sim.base_url, service_prefetch(concurrency), concurrency
            )
        else:
            extra = {"CANCELLER_CONCURRENCY": str(concurrency), **(env or {})}
            proc = await h.start_worker(ctx.broker, trial, ctx.sim.base_url, extra)
        drain = Drain(events)
        sampler = h.RssSampler([proc.pid], progress=lambda: drain.count, interval_s=rss_interval_s)
        meter = h.CpuMeter(
            {"worker": [proc.pid], "simulator": [ctx.sim.proc.pid], "rabbitmq": h.broker_pids()}
        )
        spy: Proc | None = None
        try:
            sampler.start()
            await h.watch_outputs(ctx.broker, trial.outputs, drain, [proc], 60, until=1, interval_s=0.01)
            if drain.count == 0:
                raise BenchError(f"no output at all: {drain.gave_up}")
            first_output_s = time.monotonic() - spawned
            meter.start()
            if profile_to is not None:
                spy = await start_profiler(proc.pid, profile_to)
            deadline = max(60.0, events / 100)
            await h.watch_outputs(ctx.broker, trial.outputs, drain, [proc], deadline)
            cpu = meter.stop()
            hwm = await sampler.stop()
        finally:
            await sampler.stop()
            if spy is not None:
                await spy.stop(timeout_s=20, sig=2)  # SIGINT: py-spy writes its output and exits
            code = await proc.stop()
        stats = await ctx.sim.stats()
    return {
        "kind": kind,
        "events": events,
        "completed": drain.completed,
        "gave_up": drain.gave_up,
        "events_per_s": drain.rate(),
        "drain_s": drain.seconds(),
        "first_output_s": round(first_output_s, 2),
        "peak_rss_mib": hwm.get(proc.pid, 0) / 1024,
        "max_sampled_rss_mib": sampler.max_rss_kib() / 1024,
        "rss_curve": rss_curve(sampler.samples, events),
        "timeline": timeline(drain),
        "cpu_pct": cpu,
        "preload_per_s": round(preload_rate),
        "simulator": stats,
        "exit_code": code,
        "env": env or {},
        "concurrency": concurrency,
        "log": str(proc.log_path.relative_to(h.ROOT)),
    }


def timeline(drain: Drain, step_s: float = 1.0) -> list[list[float]]:
    """[seconds since the first output, outputs so far], about one point per `step_s`."""
    start = next((t for t, c in drain.samples if c > 0), None)
    if start is None:
        return []
    points: list[list[float]] = []
    for t, count in drain.samples:
        if t >= start and (not points or t - start - points[-1][0] >= step_s):
            points.append([round(t - start, 2), count])
    if drain.samples and points and points[-1][1] != drain.samples[-1][1]:
        points.append([round(drain.samples[-1][0] - start, 2), drain.samples[-1][1]])
    return points


def rss_curve(samples: list[dict[str, Any]], target: int) -> dict[str, Any]:
    """RSS (MiB) at 0/25/50/75/100% of progress and the slope from 25% to the end."""
    points = [(s["done"], sum(s["rss_kib"].values()) / 1024) for s in samples if sum(s["rss_kib"].values())]
    at: dict[str, float | None] = {}
    for pct in (0, 25, 50, 75, 100):
        hit = next((rss for done, rss in points if done >= target * pct / 100 and (pct or done > 0)), None)
        at[f"{pct}%"] = round(hit, 1) if hit is not None else None
    tail = [(d, r) for d, r in points if d >= target * 0.25]
    slope = None
    if len(tail) >= 3 and tail[-1][0] > tail[0][0]:
        mean_d = sum(d for d, _ in tail) / len(tail)
        mean_r = sum(r for _, r in tail) / len(tail)
        var = sum((d - mean_d) ** 2 for d, _ in tail)
        if var > 0:
            slope = sum((d - mean_d) * (r - mean_r) for d, r in tail) / var * 10_000
    return {
        "rss_mib_at": at,
        "slope_mib_per_10k_events": None if slope is None else round(slope, 3),
        "samples": len(points),
    }


async def start_profiler(pid: int, out: Path) -> Proc:
    """py-spy record (raw collapsed stacks, 100 Hz) attached to a running worker."""
    out.parent.mkdir(parents=True, exist_ok=True)
    py_spy = str(Path(h.PYTHON).parent / "py-spy")
    argv = [py_spy, "record", "-p", str(pid), "-o", str(out), "--format", "raw", "-r", "100"]
    proc = await h.spawn("py-spy", argv, {})
    await asyncio.sleep(0.3)
    if not proc.alive:
        raise BenchError(f"py-spy could not attach: {proc.log_tail()}")
    return proc


def parse_profile(path: Path, top: int = 15) -> dict[str, Any]:
    """Own and total samples per function from py-spy's raw (collapsed) output."""
    own: Counter[str] = Counter()
    total: Counter[str] = Counter()
    samples = 0
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        samples += n
        frames = [_frame(f) for f in stack.split(";") if f]
        if frames:
            own[frames[-1]] += n
        for frame in set(frames):
            total[frame] += n

    def table(counter: Counter[str]) -> list[dict[str, Any]]:
        return [
            {"function": f, "samples": c, "pct": round(100 * c / max(1, samples), 1)}
            for f, c in counter.most_common(top)
        ]

    packages: Counter[str] = Counter()
    for frame, n in own.items():
        packages[_package(frame)] += n
    skip = (
        "<module>",
        "run_forever",
        "_run_once",
        "run_until_complete",
        "Runner.run",
        "Handle._run",
        "main (",
    )
    total_useful = Counter(
        {f: c for f, c in total.items() if not any(s in f for s in skip) and "runpy" not in f}
    )
    return {
        "samples": samples,
        "own": table(own),
        "total": table(total_useful),
        "own_by_package": table(packages),
    }


def _package(frame: str) -> str:
    """The top-level package (or stdlib module) a frame's file belongs to."""
    _, _, where = frame.partition(" (")
    where = where.rstrip(")")
    if where.startswith("<frozen"):
        return "importlib (frozen)"
    if not where:
        return "(native / unknown)"
    head = where.split("/")[0]
    return head.removesuffix(".py")


def _frame(frame: str) -> str:
    """`func (path/to/file.py:123)` -> `func (path/to/file.py)`: lines merged per function."""
    name, _, where = frame.partition(" (")
    return f"{name} ({where.rsplit(':', 1)[0]})" if where else name


# --- scenario a ----------------------------------------------------------------------------------


async def scenario_a(ctx: Ctx) -> dict[str, Any]:
    cfg = ctx.cfg
    await ctx.sim.configure(latency_s=0.0, rate_limit=None)
    service: list[dict[str, Any]] = []
    raw: list[dict[str, Any]] = []
    for run in range(cfg.runs):  # interleaved, so drift on a shared machine hits both alike
        service.append(
            await guarded(f"a service run {run + 1}", lambda: drain_trial(ctx, "service", cfg.a_events))
        )
        raw.append(await guarded(f"a raw run {run + 1}", lambda: drain_trial(ctx, "raw", cfg.a_events)))
    matrix = []
    for transport in ("aiohttp",):  # the one HTTP path; bench.http_client compares the others
        for loop in setting_choices("event_loop", ("uvloop", "asyncio")):
            env = {"CANCELLER_EVENT_LOOP": loop}
            result = await guarded(
                f"a matrix {transport}/{loop}",
                partial(drain_trial, ctx, "service", cfg.a_matrix_events, env=env),
            )
            matrix.append({"transport": transport, "loop": loop, **result})
    profile_path = h.RESULTS / f"profile-a-{uuid.uuid4().hex[:6]}.txt"
    profiled = await guarded(
        "a profiled run", lambda: drain_trial(ctx, "service", cfg.a_profile_events, profile_to=profile_path)
    )
    profile: dict[str, Any] = {"run": profiled, "path": str(profile_path.relative_to(h.ROOT))}
    if profile_path.exists():
        profile.update(parse_profile(profile_path))
    http = [
        await guarded(f"a http micro-benchmark run {n + 1}", lambda: http_micro(ctx)) for n in range(cfg.runs)
    ]
    ratios = [
        s["events_per_s"] / r["events_per_s"]
        for s, r in zip(service, raw, strict=True)
        if s.get("events_per_s") and r.get("events_per_s")
    ]
    result = {
        "service_defaults": {k: setting_default(k) for k in ("event_loop", "concurrency")},
        "service": service,
        "raw": raw,
        "matrix": matrix,
        "profile": profile,
        "http": http,
        "summary": {
            "service_events_per_s": h.summary(s.get("events_per_s") for s in service),
            "raw_events_per_s": h.summary(r.get("events_per_s") for r in raw),
            "ratio": h.summary(ratios),
            "service_peak_rss_mib": h.summary(s.get("peak_rss_mib") for s in service),
            "raw_peak_rss_mib": h.summary(r.get("peak_rss_mib") for r in raw),
            "http_rps": {
                name: h.summary(run.get(name, {}).get("rps") for run in http)
                for name in ("httpx", "httpx-aiohttp", "service", "aiohttp")
            },
        },
    }
    h.write_json("a", result)
    return result


async def http_micro(ctx: Ctx) -> dict[str, Any]:
    await ctx.sim.reset()
    argv = [
        h.PYTHON, "-m", "bench.http_client", "--base-url", ctx.sim.base_url,
        "--seconds", str(ctx.cfg.http_seconds), "--concurrency", str(ctx.cfg.http_concurrency),
    ]  # fmt: skip
    code, out = await h.run_cmd(*argv, timeout_s=60 + 10 * ctx.cfg.http_seconds)
    if code != 0:
        raise BenchError(f"http micro-benchmark failed ({code}): {out[-300:]}")
    result: dict[str, Any] = json.loads(out.splitlines()[-1])
    return result


# --- scenario b ----------------------------------------------------------------------------------


async def scenario_b(ctx: Ctx) -> dict[str, Any]:
    cfg = ctx.cfg
    ideal = cfg.b_concurrency / (cfg.b_latency_ms / 1000)
    await ctx.sim.configure(latency_s=cfg.b_latency_ms / 1000, rate_limit=None)
    try:
        runs = [
            await guarded(
                f"b run {n + 1}",
                lambda: drain_trial(ctx, "service", cfg.b_events, concurrency=cfg.b_concurrency),
            )
            for n in range(cfg.runs)
        ]
        # One run of the raw loop under the same conditions: how close this machine can get at all.
        raw = await guarded(
            "b raw loop (reference)",
            lambda: drain_trial(ctx, "raw", cfg.b_events, concurrency=cfg.b_concurrency),
        )
    finally:
        await ctx.sim.configure(latency_s=0.0)
    for run in [*runs, raw]:
        if run.get("events_per_s"):
            run["share_of_ideal"] = run["events_per_s"] / ideal
    result = {
        "ideal_events_per_s": ideal,
        "runs": runs,
        "raw": raw,
        "summary": h.summaries(runs, "events_per_s", "share_of_ideal", "peak_rss_mib"),
    }
    h.write_json("b", result)
    return result


# --- scenario c: the rate limit, one and two workers ----------------------------------------------


def window_starts(started: list[float], window_s: float) -> list[float]:
    """Where the simulator's fixed windows began: at the first call after the previous one ended."""
    starts: list[float] = []
    for t in sorted(started):
        if not starts or t - starts[-1] >= window_s:
            starts.append(t)
    return starts


async def rate_trial(ctx: Ctx, workers: int) -> dict[str, Any]:
    cfg = ctx.cfg
    limit_per_s = cfg.c_limit / cfg.c_window_s
    windows = max(1, round(cfg.c_seconds / cfg.c_window_s))
    seconds = windows * cfg.c_window_s
    backlog = int(limit_per_s * seconds * 2 + 500)
    env = {"CANCELLER_DIALNEXA_MAX_RPS": f"{limit_per_s:g}"}
    async with (
        simulator_in_process(rate_limit=cfg.c_limit, rate_window_s=cfg.c_window_s) as (sim, base_url),
        Trial(ctx.broker) as trial,
    ):
        await trial.preload_campaigns(h.single_workflow_events(backlog, trial.tag))
        procs = list(
            await asyncio.gather(
                *(h.start_worker(ctx.broker, trial, base_url, env, name=f"worker{n}") for n in range(workers))
            )
        )
        meter = h.CpuMeter({"workers": [p.pid for p in procs], "rabbitmq": h.broker_pids()})
        try:
            await wait_until(lambda: sim.call_count > 0, timeout_s=60, what="the first DialNexa call")
            meter.start()
            first = min(c.started_at for c in sim.calls)
            end = first + seconds
            while time.monotonic() < end + 0.5:  # bounded: `end` is fixed
                if not all(p.alive for p in procs):
                    raise BenchError(f"a worker exited: {next(p for p in procs if not p.alive).log_tail()}")
                await asyncio.sleep(0.2)
            cpu = meter.stop()
        finally:
            codes = [await p.stop() for p in procs]
        calls = [c for c in sim.calls if first <= c.started_at < end]
        statuses = Counter(c.status for c in calls)
        ok = sum(n for s, n in statuses.items() if s is not None and (200 <= s < 300 or s == 409))
        limited = statuses.get(429, 0)
        starts = window_starts([c.started_at for c in calls], cfg.c_window_s)
        whole = sim.stats()["status_counts"]
    return {
        "workers": workers,
        "limit": f"{cfg.c_limit} per {cfg.c_window_s:g}s",
        "measured_s": seconds,
        "windows": len(starts),
        "ok_calls": ok,
        "ok_per_s": ok / seconds,
        "share_used": ok / (limit_per_s * seconds),
        "share_429": limited / max(1, len(calls)),
        "calls": len(calls),
        "status_counts": {str(k): v for k, v in statuses.items()},
        "status_counts_whole_run": {str(k): v for k, v in whole.items()},
        "per_window_ok": [
            sum(1 for c in calls if c.status == 200 and s <= c.started_at < s + cfg.c_window_s)
            for s in starts
        ],
        "backlog": backlog,
        "env": env,
        "cpu_pct": cpu,
        "exit_codes": codes,
        "logs": [str(p.log_path.relative_to(h.ROOT)) for p in procs],
    }


async def scenario_c(ctx: Ctx) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for workers in (1, 2):
        runs = [
            await guarded(f"c {workers} worker(s) run {n + 1}", partial(rate_trial, ctx, workers))
            for n in range(ctx.cfg.runs)
        ]
        result[f"workers_{workers}"] = {
            "runs": runs,
            "summary": h.summaries(runs, "share_used", "share_429", "ok_per_s"),
        }
    h.write_json("c", result)
    return result


# --- scenario d: complaint latency behind a campaign backlog ---------------------------------------


async def complaint_trial(ctx: Ctx) -> dict[str, Any]:
    cfg = ctx.cfg
    limit_per_s = cfg.d_limit / cfg.d_window_s
    env = {"CANCELLER_DIALNEXA_MAX_RPS": f"{limit_per_s:g}"}
    async with (
        simulator_in_process(rate_limit=cfg.d_limit, rate_window_s=cfg.d_window_s) as (sim, base_url),
        Trial(ctx.broker) as trial,
    ):
        backlog = [
            encoded(
                campaign(
                    [f"wf_{trial.tag}_{e}_{n}" for n in range(cfg.d_ids_per_event)], f"evt_{trial.tag}_{e}"
                )
            )
            for e in range(cfg.d_backlog_events)
        ]
        await trial.preload_campaigns(backlog)
        arrived: dict[str, float] = {}
        channel = await ctx.broker.connection.channel(publisher_confirms=True)
        proc = await h.start_worker(ctx.broker, trial, base_url, env)
        try:

            async def on_output(message: AbstractIncomingMessage) -> None:
                subject = json.loads(message.body).get("subject", "")
                if subject.startswith("wf_cpl_"):
                    arrived.setdefault(subject, time.monotonic())

            outputs = await channel.get_queue(trial.outputs, ensure=False)
            await outputs.consume(on_output, no_ack=True)
            exchange = await channel.get_exchange(trial.names["input_exchange"], ensure=False)
            await wait_answering(proc, "/readyz", timeout_s=30)
            await wait_until(lambda: sim.call_count > 0, timeout_s=30, what="the first DialNexa call")
            await asyncio.sleep(cfg.d_warmup_s)  # the campaign backlog now drains at the limit
            published: dict[str, float] = {}
            count = round(cfg.d_seconds / cfg.d_interval_s)
            phase_start = time.monotonic()
            for n in range(count):
                await asyncio.sleep(max(0.0, phase_start + n * cfg.d_interval_s - time.monotonic()))
                workflow_id = f"wf_cpl_{trial.tag}_{n}"
                body = encoded(complaint([workflow_id], f"evt_cpl_{trial.tag}_{n}", complaint_id=f"cpl_{n}"))
                published[workflow_id] = time.monotonic()
                await exchange.publish(
                    aio_pika.Message(body, content_type="application/cloudevents+json", delivery_mode=2),
                    "complaint-received",
                    timeout=10,
                )
            phase_end = time.monotonic()
            with contextlib.suppress(HarnessError):  # whatever has not arrived by then is reported missing
                await wait_until(
                    lambda: len(arrived) >= len(published) or not proc.alive, timeout_s=15, what="outputs"
                )
            first_call: dict[str, float] = {}
            first_ok: dict[str, float] = {}
            campaign_ok = 0
            for call in sim.calls:
                if call.workflow_id in published:
                    first_call.setdefault(call.workflow_id, call.started_at)
                    if call.status is not None and (200 <= call.status < 300 or call.status == 409):
                        first_ok.setdefault(call.workflow_id, call.started_at)
                elif call.status == 200 and phase_start <= call.started_at < phase_end:
                    campaign_ok += 1
            stats = sim.stats()
        finally:
            code = await proc.stop()
            with contextlib.suppress(Exception):
                await channel.close()
    to_call = [first_call[w] - t for w, t in published.items() if w in first_call]
    to_ok = [first_ok[w] - t for w, t in published.items() if w in first_ok]
    to_output = [arrived[w] - t for w, t in published.items() if w in arrived]
    phase_s = max(1e-9, phase_end - phase_start)
    return {
        "complaints": len(published),
        "served": len(to_call),
        "p50_s": percentile(to_call, 0.5),
        "p99_s": percentile(to_call, 0.99),
        "max_s": max(to_call, default=None),
        "latencies_s": [round(x, 4) for x in to_call],
        "ok_p50_s": percentile(to_ok, 0.5),
        "ok_p99_s": percentile(to_ok, 0.99),
        "output_p50_s": percentile(to_output, 0.5),
        "output_p99_s": percentile(to_output, 0.99),
        "outputs_seen": len(to_output),
        "campaign_ok_per_s": campaign_ok / phase_s,
        "limit_per_s": limit_per_s,
        "status_counts_whole_run": {str(k): v for k, v in stats["status_counts"].items()},
        "env": env,
        "exit_code": code,
        "log": str(proc.log_path.relative_to(h.ROOT)),
    }


async def scenario_d(ctx: Ctx) -> dict[str, Any]:
    runs = [await guarded(f"d run {n + 1}", lambda: complaint_trial(ctx)) for n in range(ctx.cfg.runs)]
    pooled = [x for r in runs for x in r.get("latencies_s", [])]
    result = {
        "runs": runs,
        "summary": {
            **h.summaries(
                runs, "p50_s", "p99_s", "ok_p99_s", "output_p50_s", "output_p99_s", "campaign_ok_per_s"
            ),
            "pooled_p99_s": percentile(pooled, 0.99),
            "pooled_n": len(pooled),
        },
    }
    h.write_json("d", result)
    return result


# --- scenario e: a large backlog, RSS over progress --------------------------------------------------


async def scenario_e(ctx: Ctx) -> dict[str, Any]:
    cfg = ctx.cfg
    await ctx.sim.configure(latency_s=0.0, rate_limit=None)
    runs = [
        await guarded(
            f"e run {n + 1} ({cfg.e_events} events)", lambda: drain_trial(ctx, "service", cfg.e_events)
        )
        for n in range(cfg.e_runs)
    ]
    from service.config import Settings

    settings = Settings(dialnexa_api_key=h.API_KEY)  # type: ignore[arg-type]
    result = {
        "events": cfg.e_events,
        "terminal_cache_size": getattr(settings, "terminal_cache_size", None),
        "runs": runs,
        "summary": {
            **h.summaries(runs, "peak_rss_mib", "events_per_s"),
            "slope_mib_per_10k_events": h.summary(
                r.get("rss_curve", {}).get("slope_mib_per_10k_events") for r in runs
            ),
        },
    }
    h.write_json("e", result)
    return result


SCENARIOS: dict[str, Callable[[Ctx], Awaitable[dict[str, Any]]]] = {
    "a": scenario_a,
    "b": scenario_b,
    "c": scenario_c,
    "d": scenario_d,
    "e": scenario_e,
}


def config_dict(cfg: Config) -> dict[str, Any]:
    return asdict(cfg)
