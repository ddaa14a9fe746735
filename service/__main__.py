"""Command line: `workflow-canceller <command>`.

Every command reads the same `CANCELLER_*` configuration as `run`. Exit codes: 0 on success,
1 when a command's work failed (a check did not pass, a message could not be moved), 2 on bad
configuration or usage.
"""

from __future__ import annotations

import argparse
import sys

from prometheus_client import REGISTRY
from pydantic import ValidationError

from .cli import EXIT_USAGE, Command, serve_until_signal
from .config import Settings, describe_errors, secret_values
from .observe import logs
from .observe.metrics import version


def _run_worker(args: argparse.Namespace, settings: Settings) -> int:
    """Consume and cancel until SIGTERM or SIGINT."""
    from . import app

    return serve_until_signal(
        settings, "workflow-canceller", lambda stop, tracing: app.run(settings, REGISTRY, stop, tracing)
    )


def commands() -> dict[str, Command]:
    """Every subcommand by name (imported lazily, so `run` loads nothing it does not use)."""
    from . import ingress
    from .ops import commands as ops

    return {
        "run": Command(
            "consume events and cancel workflows until SIGTERM or SIGINT",
            Settings,
            _run_worker,
            serves=True,
        ),
        **ops.commands(Command),
        **ingress.commands(Command),
    }


def build_parser(table: dict[str, Command]) -> argparse.ArgumentParser:
    """The whole command line: one subcommand per entry of `table`."""
    parser = argparse.ArgumentParser(
        prog="workflow-canceller",
        description="Cancel DialNexa workflows named by CRM events (configuration: CANCELLER_* variables).",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {version()}")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, command in table.items():
        command_parser = sub.add_parser(name, help=command.help, description=command.help)
        if command.add_arguments is not None:
            command.add_arguments(command_parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Parse the command line and the settings, then run the chosen command; returns the exit code."""
    table = commands()
    args = build_parser(table).parse_args(argv)
    command = table[args.command]

    try:
        settings = command.settings()
    except ValidationError as error:
        for line in describe_errors(error):
            print(f"configuration error: {line}", file=sys.stderr)
        return EXIT_USAGE
    if command.serves:
        logs.configure(settings.log_level, settings.log_format, secrets=secret_values(settings))
    else:
        # The command prints its own one-line answer; library log lines would only repeat it.
        logs.configure("CRITICAL", "console", secrets=secret_values(settings), stream=sys.stderr)
    return command.run(args, settings)


if __name__ == "__main__":
    sys.exit(main())
