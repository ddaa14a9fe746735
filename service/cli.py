"""The command line's shared parts: exit codes, the command record, and running a long-lived
command until SIGTERM or SIGINT."""

from __future__ import annotations

import argparse
import asyncio
import importlib
import signal
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import structlog

from .config import CommonSettings

if TYPE_CHECKING:
    from .observe.tracing import Tracing

log = structlog.get_logger("workflow_canceller.cli")

EXIT_OK = 0  # done
EXIT_FAILED = 1  # tried, and it failed (a check, a publish, a DLQ move that skipped messages)
EXIT_USAGE = 2  # refused before trying: bad arguments or configuration


@dataclass(frozen=True, slots=True)
class Command:
    """One subcommand: its settings class, how it adds its arguments, and what it runs.

    `run(args, settings)` returns the exit code. `serves` commands log JSON to stdout like the
    worker; the others print their answer on stdout and keep library log lines quiet.
    """

    help: str
    settings: type[CommonSettings]
    run: Callable[[argparse.Namespace, Any], int]
    add_arguments: Callable[[argparse.ArgumentParser], None] | None = None
    serves: bool = False


def serve_until_signal(
    settings: CommonSettings,
    service_name: str,
    serve: Callable[[asyncio.Event, Tracing], Awaitable[None]],
) -> int:
    """Build the tracing the `OTEL_*` variables describe, run `serve(stop, tracing)` until SIGTERM or
    SIGINT, and return the exit code (2, with one line naming the variable, for a tracing setting
    this service cannot follow). Only the serving commands load OpenTelemetry."""
    from .observe.tracing import Tracing, TracingConfigError

    try:
        tracing = Tracing.from_env(service_name)
    except TracingConfigError as error:
        print(f"configuration error: {error}", file=sys.stderr)
        return EXIT_USAGE
    run_until_signal(settings, lambda stop: serve(stop, tracing))
    return EXIT_OK


def run_until_signal(settings: CommonSettings, serve: Callable[[asyncio.Event], Awaitable[None]]) -> None:
    """Run `serve(stop)` on the chosen event loop until SIGTERM or SIGINT sets `stop`.

    uvloop when CANCELLER_EVENT_LOOP=uvloop (the `uvloop` extra), else asyncio's own loop.
    """

    async def main() -> None:
        stop = asyncio.Event()
        install_signal_handlers(stop)
        await serve(stop)

    loop_factory = None
    if settings.event_loop == "uvloop":
        # The settings checked that the extra is installed.
        loop_factory = importlib.import_module("uvloop").new_event_loop
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        runner.run(main())


def install_signal_handlers(stop: asyncio.Event) -> None:
    """SIGTERM and SIGINT set `stop`: intake ends, in-flight work drains, the process exits 0."""
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, _on_signal, stop, signum)


def _on_signal(stop: asyncio.Event, signum: int) -> None:
    log.info("service.stopping", signal=signal.Signals(signum).name)
    stop.set()
