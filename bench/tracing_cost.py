"""What tracing costs the worker: scenario a's drain (single-workflow events, no API latency),
with tracing off and on (OTLP/HTTP to a local receiver), interleaved so drift hits both alike.

    python -m bench.tracing_cost --events 10000 --runs 3

Prints, per run, events per second and the worker's CPU per event; `docs/performance.md`
("Tracing") has the figures. The receiver is `bench.otlp_sink`'s, in this process.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
from typing import Any

from aiohttp import web

from testkit import SimProcess

from . import harness as h
from .otlp_sink import receiver
from .scenarios import Config, Ctx, drain_trial


def _cpu_us(run: dict[str, Any]) -> float | None:
    """The worker's CPU µs per event over the measured drain."""
    worker = (run.get("cpu_pct") or {}).get("worker")
    if not worker or not run.get("events_per_s"):
        return None
    return float(worker) / 100 / run["events_per_s"] * 1e6


async def measure(events: int, runs: int, port: int) -> dict[str, list[dict[str, Any]]]:
    """`runs` interleaved pairs of drains, tracing off then on."""
    counted = [0]
    runner = web.AppRunner(receiver(counted), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    broker = h.Broker()
    await broker.open()
    found: dict[str, list[dict[str, Any]]] = {"off": [], "on": []}
    try:
        sim = await SimProcess.start(h.RESULTS / "logs")
        ctx = Ctx(Config(runs=runs), broker, sim)
        await sim.configure(latency_s=0.0, rate_limit=None)
        try:
            for run in range(runs):
                for mode, env in (
                    ("off", {}),
                    ("on", {"OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{port}"}),
                ):
                    before = counted[0]
                    result = await drain_trial(ctx, "service", events, env=env)
                    result["spans"] = counted[0] - before
                    found[mode].append(result)
                    print(
                        f"run {run + 1} tracing {mode}: {result['events_per_s']:,.0f} events/s, "
                        f"worker CPU {_cpu_us(result) or 0:.0f} µs/event, spans received {result['spans']:,}",
                        flush=True,
                    )
        finally:
            await sim.proc.stop()
    finally:
        await broker.close()
        await runner.cleanup()
    return found


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--events", type=int, default=10_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--port", type=int, default=4318, help="the local OTLP receiver's port")
    args = parser.parse_args()
    found = asyncio.run(measure(args.events, args.runs, args.port))
    for mode, results in found.items():
        rates = [r["events_per_s"] for r in results if r.get("events_per_s")]
        cpus = [c for c in (_cpu_us(r) for r in results) if c is not None]
        print(
            f"tracing {mode}: median {statistics.median(rates):,.0f} events/s, "
            f"worker CPU median {statistics.median(cpus) if cpus else 0:.0f} µs/event"
        )


if __name__ == "__main__":
    main()
