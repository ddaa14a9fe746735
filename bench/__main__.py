"""`python -m bench`: run the scenarios against the local RabbitMQ and the simulator, write the report.

python -m bench                      # every scenario, 3 runs each (about 10 minutes)
python -m bench --quick              # smoke run: small sizes, 1 run
python -m bench --large              # longer matrix, profile, c and d (about 20 minutes)
python -m bench --only a,d --runs 5  # some scenarios
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import hashlib
import importlib.metadata
import json
import os
import platform
import shlex
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from testkit import SimProcess

from . import harness as h
from . import report
from .scenarios import SCENARIOS, Config, Ctx, config_dict

PACKAGES = ("aio-pika", "aiormq", "aiohttp", "httpx", "httpx-aiohttp", "httpcore", "anyio", "uvloop")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--runs", type=int, default=None, help="runs per scenario (default 3; 1 with --quick)"
    )
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="smoke run with small sizes")
    size.add_argument("--large", action="store_true", help="longer matrix, profile, c and d")
    parser.add_argument("--only", default="a,b,c,d,e", help="comma-separated scenarios (default: all)")
    parser.add_argument("--output", default="docs/benchmarks.md", help="the report (relative to the repo)")
    parser.add_argument("--quiet-wait-s", type=float, default=30, help="wait this long for an idle machine")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="FIELD=VALUE",
        help="override one size or duration of bench/scenarios.py's Config, e.g. --set e_events=40000",
    )
    parser.add_argument(
        "--render",
        metavar="RESULTS_JSON",
        help="only re-render the report from a saved bench/results/*-all.json (no benchmark is run)",
    )
    args = parser.parse_args(argv)
    args.only = [s.strip() for s in args.only.split(",") if s.strip()]
    unknown = [s for s in args.only if s not in SCENARIOS]
    if unknown:
        parser.error(f"unknown scenarios: {unknown} (choose from {sorted(SCENARIOS)})")
    if args.runs is not None and not 1 <= args.runs <= 20:
        parser.error("--runs must be between 1 and 20")
    return args


def override(cfg: Config, items: list[str]) -> Config:
    """Apply `FIELD=VALUE` overrides (numbers only) to a Config; marks the size as custom."""
    changes: dict[str, Any] = {}
    for item in items:
        name, _, value = item.partition("=")
        current = getattr(cfg, name, None)
        if not isinstance(current, int | float) or name == "runs":
            raise SystemExit(f"--set: unknown or non-numeric field {name!r}")
        try:
            changes[name] = type(current)(value)
        except ValueError:
            raise SystemExit(f"--set: {name} needs a {type(current).__name__}") from None
    return dataclasses.replace(cfg, size=f"{cfg.size}+custom", **changes) if changes else cfg


def machine() -> dict[str, Any]:
    cpu = "unknown"
    meminfo = {}
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    for line in Path("/proc/meminfo").read_text().splitlines():
        key, _, value = line.partition(":")
        meminfo[key] = value.strip()
    ram_kib = int(meminfo.get("MemTotal", "0 kB").split()[0])
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "ram_gib": round(ram_kib / 1024 / 1024, 1),
        "kernel": platform.release(),
        "os": platform.platform(terse=True),
        "loadavg_at_start": Path("/proc/loadavg").read_text().split()[:3],
    }


def service_fingerprint() -> str:
    """A short hash of every file under service/ (the code measured, committed or not)."""
    digest = hashlib.sha256()
    for path in sorted((h.ROOT / "service").rglob("*.py")):
        digest.update(str(path.relative_to(h.ROOT)).encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:12]


async def versions(broker: h.Broker) -> dict[str, Any]:
    found: dict[str, Any] = {"python": platform.python_version()}
    code, out = await h.run_cmd("rabbitmq-diagnostics", "-q", "server_version", timeout_s=30)
    found["rabbitmq"] = out.splitlines()[-1] if code == 0 and out else await broker.server_version()
    for name in PACKAGES:
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            found[name] = "not installed"
    code, out = await h.run_cmd(str(Path(h.PYTHON).parent / "py-spy"), "--version")
    found["py-spy"] = out.split()[-1] if code == 0 and out else "not found"
    code, commit = await h.run_cmd("git", "-C", str(h.ROOT), "rev-parse", "HEAD")
    code2, dirty = await h.run_cmd("git", "-C", str(h.ROOT), "status", "--porcelain", "--", "service")
    found["service_commit"] = commit if code == 0 else "unknown"
    found["service_uncommitted"] = bool(dirty.strip()) if code2 == 0 else None
    return found


def command_line() -> str:
    python = (
        os.path.relpath(sys.executable, h.ROOT) if sys.executable.startswith(str(h.ROOT)) else sys.executable
    )
    return shlex.join([python, "-m", "bench", *sys.argv[1:]])


async def run(args: argparse.Namespace) -> int:
    os.chdir(h.ROOT)
    runs = args.runs or (1 if args.quick else 3)
    cfg = Config.quick(runs) if args.quick else Config.large(runs) if args.large else Config(runs=runs)
    cfg = override(cfg, args.set)
    started, started_at = time.monotonic(), datetime.now(UTC)
    fingerprint_before = service_fingerprint()
    print(f"waiting up to {args.quiet_wait_s:.0f}s for an idle machine ...", flush=True)
    busy_at_start = await h.wait_for_quiet(args.quiet_wait_s)
    broker = h.Broker()
    await broker.open()
    results: dict[str, Any] = {}
    timings: dict[str, float] = {}
    try:
        found = await versions(broker)
        sim = await SimProcess.start(h.LOGS)
        ctx = Ctx(cfg, broker, sim)
        try:
            for key in args.only:
                print(f"scenario {key} ...", flush=True)
                t0 = time.monotonic()
                results[key] = await SCENARIOS[key](ctx)
                timings[key] = round(time.monotonic() - t0, 1)
                print(f"scenario {key} done in {timings[key]:.0f}s", flush=True)
        finally:
            await sim.proc.stop()
    finally:
        await broker.close()
    meta = {
        "command": command_line(),
        "started_at": started_at.isoformat(timespec="seconds"),
        "runtime_s": round(time.monotonic() - started, 1),
        "scenario_s": timings,
        "quick": args.quick,
        "config": config_dict(cfg),
        "machine": {**machine(), "busy_pct_before_start": busy_at_start},
        "versions": found,
        "service_fingerprint": {"before": fingerprint_before, "after": service_fingerprint()},
        "vhost": broker.vhost,
    }
    path = h.write_json("all", {"meta": meta, "results": results})
    output = h.ROOT / args.output
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(report.render(meta, results, str(path.relative_to(h.ROOT))))
    shown = output.relative_to(h.ROOT) if output.is_relative_to(h.ROOT) else output
    print(f"wrote {shown} and {path.relative_to(h.ROOT)} in {meta['runtime_s']:.0f}s")
    return 0


def render_only(args: argparse.Namespace) -> int:
    source = Path(args.render).resolve()
    saved = json.loads(source.read_text())
    output = h.ROOT / args.output
    shown = source.relative_to(h.ROOT) if source.is_relative_to(h.ROOT) else source
    output.write_text(report.render(saved["meta"], saved["results"], str(shown)))
    print(f"wrote {args.output} from {shown}")
    return 0


def main() -> None:
    args = parse_args()
    sys.exit(render_only(args) if args.render else asyncio.run(run(args)))


if __name__ == "__main__":
    main()
