"""Command line: `workflow-canceller run`. Exit codes: 0 after a clean stop, 2 on bad configuration."""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Callable
from urllib.parse import urlsplit

from prometheus_client import REGISTRY
from pydantic import ValidationError

from . import app, logs
from .config import Settings, describe_errors

EXIT_OK = 0
EXIT_CONFIG = 2


def _secrets(settings: Settings) -> list[str]:
    """Values that must never appear in a log line: the API key, its secret, the broker password."""
    key = settings.dialnexa_api_key.get_secret_value()
    password = urlsplit(settings.amqp_url.get_secret_value()).password or ""
    return [key, key.partition(":")[2], password]


async def _serve(settings: Settings) -> None:
    stop = asyncio.Event()
    app.install_signal_handlers(stop)
    await app.run(settings, REGISTRY, stop)


def main(argv: list[str] | None = None) -> int:
    """Parse the command line and settings, then run the worker; returns the exit code."""
    parser = argparse.ArgumentParser(
        prog="workflow-canceller",
        description="Cancel DialNexa workflows named by CRM events (configuration: CANCELLER_* variables).",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("run", help="consume events and cancel workflows until SIGTERM or SIGINT")
    parser.parse_args(argv)

    try:
        settings = Settings()  # type: ignore[call-arg]  # required fields come from the environment
    except ValidationError as error:
        for line in describe_errors(error):
            print(f"configuration error: {line}", file=sys.stderr)
        return EXIT_CONFIG
    logs.configure(settings.log_level, settings.log_format, secrets=_secrets(settings))
    with asyncio.Runner(loop_factory=_loop_factory(settings)) as runner:
        runner.run(_serve(settings))
    return EXIT_OK


def _loop_factory(settings: Settings) -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop when chosen (CANCELLER_EVENT_LOOP=uvloop), else asyncio's default loop."""
    if settings.event_loop == "uvloop":
        import uvloop

        return uvloop.new_event_loop
    return None


if __name__ == "__main__":
    sys.exit(main())
