"""CLI: `python -m service.simulator` (or `dialnexa-simulator`) serves the simulator until a signal."""

from __future__ import annotations

import argparse
import asyncio
import signal

from service.simulator.app import SimConfig, Simulator, start_simulator


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    defaults = SimConfig()
    parser = argparse.ArgumentParser(prog="dialnexa-simulator", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8089, help="0 picks any free port")
    parser.add_argument("--api-key", default=defaults.api_key, help="expected bearer token")
    parser.add_argument("--forbidden-key", default=None, help="bearer token answered with 403")
    parser.add_argument("--latency-ms", type=float, default=0.0, help="delay before every /v1 answer")
    parser.add_argument("--rate-limit", type=int, default=None, help="max /v1 calls per window")
    parser.add_argument("--rate-window-s", type=float, default=defaults.rate_window_s)
    parser.add_argument(
        "--reset-style", choices=("seconds", "epoch", "fractional"), default=defaults.reset_style
    )
    parser.add_argument("--envelope", choices=("bare", "wrapped"), default=defaults.envelope)
    parser.add_argument("--camel-case", action="store_true", help="camelCase field names")
    parser.add_argument("--no-auto-create", action="store_true", help="unknown ids answer 404")
    faults = parser.add_argument_group("injected faults", "probability per /v1 call (0 to 1; default 0)")
    faults.add_argument("--fault-5xx", type=float, default=0.0, help="answer 500, 502, 503 or 504")
    faults.add_argument(
        "--fault-timeout", type=float, default=0.0, help="answer only after --fault-timeout-s"
    )
    faults.add_argument("--fault-drop", type=float, default=0.0, help="close the connection, no answer")
    faults.add_argument("--fault-429", type=float, default=0.0, help="429 with Retry-After")
    faults.add_argument("--fault-timeout-s", type=float, default=defaults.fault_timeout_s)
    faults.add_argument("--fault-retry-after-s", type=float, default=defaults.fault_retry_after_s)
    faults.add_argument("--fault-seed", type=int, default=None, help="seed of the fault RNG (reproducible)")
    return parser.parse_args(argv)


async def _serve(config: SimConfig, host: str, port: int) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    runner, base_url = await start_simulator(Simulator(config), host, port)
    try:
        print(f"dialnexa-simulator listening on {base_url}", flush=True)
        await stop.wait()
    finally:
        await runner.cleanup()


def main(argv: list[str] | None = None) -> int:
    """Parse flags, serve until SIGTERM or SIGINT, return the exit code."""
    args = _parse_args(argv)
    try:
        config = SimConfig(
            api_key=args.api_key,
            forbidden_key=args.forbidden_key,
            latency_s=args.latency_ms / 1000,
            rate_limit=args.rate_limit,
            rate_window_s=args.rate_window_s,
            reset_style=args.reset_style,
            envelope=args.envelope,
            camel_case=args.camel_case,
            auto_create=not args.no_auto_create,
            fault_5xx=args.fault_5xx,
            fault_timeout=args.fault_timeout,
            fault_drop=args.fault_drop,
            fault_429=args.fault_429,
            fault_timeout_s=args.fault_timeout_s,
            fault_retry_after_s=args.fault_retry_after_s,
            fault_seed=args.fault_seed,
        )
    except ValueError as exc:
        raise SystemExit(f"dialnexa-simulator: {exc}") from exc
    asyncio.run(_serve(config, args.host, args.port))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
