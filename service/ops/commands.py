"""Operator commands: `dlq list|replay|purge`, `publish` and `check`.

Each reads the same `CANCELLER_*` configuration as `run`, prints its answer on stdout (`--json`
for machines) and returns an exit code: 0 done, 1 failed, 2 refused (bad usage). Nothing here
prints a secret or a message body.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import re
import sys
from collections.abc import AsyncIterator, Callable, Iterable
from datetime import UTC, datetime
from typing import Any, TextIO
from urllib.parse import urlsplit

import aio_pika
import orjson
from aio_pika.abc import AbstractChannel
from prometheus_client import CollectorRegistry

from ..broker import topology
from ..broker.connection import BROKER_ERRORS, connect
from ..broker.publisher import refusals
from ..cli import EXIT_FAILED, EXIT_OK, EXIT_USAGE
from ..config import CommonSettings, Settings, secret_values
from ..core.events import CAMPAIGN_ENDED, COMPLAINT_RECEIVED, InvalidEvent, cloudevent, parse
from ..core.ports import AuthError, DialNexaError, PublishRefused
from ..dialnexa.client import DialNexaClient
from ..dialnexa.http import AiohttpSession
from ..observe.logs import MASK
from ..observe.metrics import Metrics
from ..retry import delay_steps_s
from .dlq import REASONS, DeadLetters, Filter, Letter, Moved, Summary, mask

CLI_SOURCE = "urn:workflow-canceller:cli"
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*$")
_UNIT_S = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86_400}


def commands(command: Callable[..., Any]) -> dict[str, Any]:
    """The operator subcommands, built with the dispatcher's `Command` type."""
    return {
        "dlq": command(
            "inspect, replay or purge dead-lettered messages", CommonSettings, _dlq, _dlq_arguments
        ),
        "publish": command(
            "publish one well-formed event to the input exchange (drills, smoke tests)",
            CommonSettings,
            _publish,
            _publish_arguments,
        ),
        "check": command(
            "check the configuration, the broker, the topology and the DialNexa key; exit 0 if all pass",
            Settings,
            _check,
        ),
    }


def duration_s(text: str) -> float:
    """`90`, `90s`, `15m`, `2h`, `1d` -> seconds (argparse type)."""
    match = _DURATION.match(text)
    if not match:
        raise argparse.ArgumentTypeError(f"not a duration: {text!r} (use e.g. 90s, 15m, 2h, 1d)")
    return float(match.group(1)) * _UNIT_S[match.group(2)]


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


# --- dlq ------------------------------------------------------------------------------------------


def _dlq_arguments(parser: argparse.ArgumentParser) -> None:
    actions = parser.add_subparsers(dest="action", required=True)
    listing = actions.add_parser("list", help="counts by reason and event type, and the newest messages")
    listing.add_argument("--limit", type=_positive_int, default=20, help="newest messages shown (20)")
    listing.add_argument("--json", action="store_true", help="machine-readable output")
    for name, text in (
        ("replay", "move matching messages back to the input queue they came from"),
        ("purge", "delete matching messages for good (needs --yes)"),
    ):
        sub = actions.add_parser(name, help=text, description=text)
        sub.add_argument("--reason", action="append", choices=REASONS, help="only this reason (repeatable)")
        sub.add_argument("--event-type", action="append", help="only this event type (repeatable)")
        sub.add_argument(
            "--older-than", type=duration_s, metavar="AGE", help="dead-lettered at least AGE ago"
        )
        sub.add_argument("--newer-than", type=duration_s, metavar="AGE", help="dead-lettered at most AGE ago")
        sub.add_argument("--limit", type=_positive_int, help="act on at most this many")
        sub.add_argument("--dry-run", action="store_true", help="show what would happen; change nothing")
        sub.add_argument("--json", action="store_true", help="machine-readable output")
        if name == "purge":
            sub.add_argument("--yes", action="store_true", help="really delete")


def _dlq(args: argparse.Namespace, settings: CommonSettings) -> int:
    if args.action == "purge" and not (args.yes or args.dry_run):
        print("refusing to purge without --yes (try --dry-run first)", file=sys.stderr)
        return EXIT_USAGE
    return asyncio.run(_dlq_async(args, settings))


async def _dlq_async(args: argparse.Namespace, settings: CommonSettings) -> int:
    moved = Moved()  # filled as messages are moved, so a failure midway still reports them
    try:
        async with _channel(settings, "dlq") as channel:
            dead = DeadLetters(channel, settings)
            if args.action == "list":
                _print_summary(await dead.summary(args.limit), args.json, sys.stdout)
                return EXIT_OK
            selection = Filter(
                reasons=frozenset(args.reason or ()),
                event_types=frozenset(args.event_type or ()),
                older_than_s=args.older_than,
                newer_than_s=args.newer_than,
            )
            if args.action == "replay":
                await dead.replay(selection, limit=args.limit, dry_run=args.dry_run, moved=moved)
            else:
                await dead.purge(selection, limit=args.limit, dry_run=args.dry_run, moved=moved)
    except (*BROKER_ERRORS, TypeError, ValueError) as error:
        # TypeError/ValueError: a message whose copy cannot be encoded. It stays in the DLQ.
        if args.action != "list" and moved.matched:
            _print_moved(args.action, moved, args.dry_run, args.json, sys.stdout)
        print(f"failed: {_describe(error, settings)}", file=sys.stderr)
        return EXIT_FAILED
    _print_moved(args.action, moved, args.dry_run, args.json, sys.stdout)
    return EXIT_FAILED if moved.skipped else EXIT_OK


def _age(seconds: float | None) -> str:
    """`42s`, `3m05s`, `2h10m`, `4d03h`."""
    if seconds is None:
        return "?"
    s = int(seconds)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 86_400:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 86_400}d{s % 86_400 // 3600:02d}h"


def _print_summary(summary: Summary, as_json: bool, out: TextIO) -> None:
    now = datetime.now(UTC)
    if as_json:
        document = {
            "queue": summary.queue,
            "count": summary.count,
            "by_reason": dict(summary.by_reason),
            "by_event_type": dict(summary.by_event_type),
            "by_reason_and_event_type": [
                {"reason": reason, "event_type": event_type, "count": count}
                for (reason, event_type), count in sorted(summary.by_reason_and_type.items())
            ],
            "newest": [letter.as_dict(now) for letter in summary.newest],
        }
        out.write(orjson.dumps(document, option=orjson.OPT_INDENT_2).decode() + "\n")
        return
    out.write(f"dead-letter queue {summary.queue}: {summary.count} message(s)\n")
    if not summary.count:
        return
    out.write(f"by reason:     {_counts(summary.by_reason.items())}\n")
    out.write(f"by event type: {_counts(summary.by_event_type.items())}\n")
    out.write(
        "by both:       "
        + _counts((f"{r}/{t}", n) for (r, t), n in sorted(summary.by_reason_and_type.items()))
        + "\n"
    )
    out.write(f"newest {len(summary.newest)}:\n")
    _print_letters(summary.newest, now, out)


def _print_letters(letters: Iterable[Letter], now: datetime, out: TextIO) -> None:
    rows = [("AGE", "REASON", "ATTEMPTS", "EVENT TYPE", "EVENT ID", "ERROR")]
    for letter in letters:
        rows.append(
            (
                _age(letter.age_s(now)),
                letter.reason,
                "?" if letter.attempts is None else str(letter.attempts),
                letter.event_type,
                (letter.event_id or "?")[:40],
                letter.error[:80],
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(5)]
    for row in rows:
        out.write(
            "  " + "  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row[:5])) + "  " + row[5] + "\n"
        )


def _counts(items: Iterable[tuple[str, int]]) -> str:
    return ", ".join(f"{name} {count}" for name, count in sorted(items, key=lambda x: (-x[1], x[0])))


def _print_moved(action: str, moved: Moved, dry_run: bool, as_json: bool, out: TextIO) -> None:
    verb = {"replay": "replayed", "purge": "purged"}[action]
    if as_json:
        now = datetime.now(UTC)
        document = {
            "action": action,
            "dry_run": dry_run,
            "matched": len(moved.matched),
            verb: len(moved.done),
            "targets": dict(moved.targets),
            "skipped": [{**letter.as_dict(now), "why": why} for letter, why in moved.skipped],
        }
        out.write(orjson.dumps(document, option=orjson.OPT_INDENT_2).decode() + "\n")
        return
    if dry_run:
        out.write(f"dry run: {len(moved.matched)} message(s) match; nothing was changed\n")
        for target, count in sorted(moved.targets.items()):
            out.write(f"  would {action} {count}" + (f" -> {target}\n" if action == "replay" else "\n"))
    else:
        out.write(f"{verb} {len(moved.done)} of {len(moved.matched)} matching message(s)\n")
        for target, count in sorted(moved.targets.items()):
            if action == "replay":
                out.write(f"  {count} -> {target}\n")
    for letter, why in moved.skipped:
        out.write(f"  skipped {letter.event_id or '?'} ({letter.reason}, {letter.event_type}): {why}\n")


# --- publish --------------------------------------------------------------------------------------


def _publish_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("type", choices=(CAMPAIGN_ENDED, COMPLAINT_RECEIVED), help="the event type")
    parser.add_argument(
        "--workflow-id", action="append", required=True, dest="workflow_ids", help="repeatable"
    )
    parser.add_argument("--campaign-id", help="required for campaign-ended")
    parser.add_argument("--complaint-id", help="required for complaint-received")
    parser.add_argument("--lead-id", help="complaint-received only")
    parser.add_argument("--reason", help="campaign-ended only")
    parser.add_argument("--source", default=CLI_SOURCE, help=f"CloudEvents source ({CLI_SOURCE})")
    parser.add_argument("--id", dest="event_id", help="the event id (default: a new UUID)")


def build_event(args: argparse.Namespace, now: datetime) -> dict[str, Any]:
    """The CloudEvent the `publish` arguments describe (not yet validated)."""
    campaign = args.type == CAMPAIGN_ENDED
    return cloudevent(
        args.type,
        args.workflow_ids,
        event_id=args.event_id,
        source=args.source,
        time=now,
        campaign_id=args.campaign_id,
        complaint_id=None if campaign else args.complaint_id,
        lead_id=None if campaign else args.lead_id,
        reason=args.reason if campaign else None,
    )


def _publish(args: argparse.Namespace, settings: CommonSettings) -> int:
    event = build_event(args, datetime.now(UTC))
    body = orjson.dumps(event)
    try:
        parse(body, "application/cloudevents+json", settings.max_body_bytes)
    except InvalidEvent as error:
        print(f"refused: the event would be invalid: {error}", file=sys.stderr)
        return EXIT_USAGE
    try:
        asyncio.run(_publish_async(settings, body, event))
    except (PublishRefused, *BROKER_ERRORS) as error:
        print(f"failed: {_describe(error, settings)}", file=sys.stderr)
        return EXIT_FAILED
    print(event["id"])
    return EXIT_OK


async def _publish_async(settings: CommonSettings, body: bytes, event: dict[str, Any]) -> None:
    async with _channel(settings, "publish") as channel:
        exchange = await channel.get_exchange(settings.input_exchange, ensure=True)
        message = aio_pika.Message(
            body,
            content_type="application/cloudevents+json",
            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
            message_id=event["id"],
            type=event["type"],
            timestamp=datetime.now(UTC),
            app_id="workflow-canceller-cli",
        )
        with refusals(exchange.name, event["type"]):
            await exchange.publish(message, event["type"], mandatory=True, timeout=settings.publish_timeout_s)


# --- check ----------------------------------------------------------------------------------------


def _check(args: argparse.Namespace, settings: Settings) -> int:
    lines = asyncio.run(check(settings))
    for ok, name, text in lines:
        print(f"{'ok  ' if ok else 'FAIL'}  {name:<9} {text}")
    return EXIT_OK if all(ok for ok, _, _ in lines) else EXIT_FAILED


async def check(settings: Settings) -> list[tuple[bool, str, str]]:
    """Each check's (passed, name, one line); later checks are skipped when the broker is down."""
    url = urlsplit(settings.amqp_url.get_secret_value())
    port = url.port or (5671 if url.scheme == "amqps" else 5672)
    where = f"{url.scheme}://{url.hostname}:{port}{url.path or '/'}"
    lines = [(True, "config", "CANCELLER_* settings are valid")]
    try:
        async with _channel(settings, "check") as channel:
            lines.append((True, "broker", f"connected to {where}"))
            try:
                await topology.declare(channel, settings)
            except BROKER_ERRORS as error:
                lines.append((False, "topology", _describe(error, settings)))
            else:
                count = len(settings.input_queues) + 1 + len(delay_steps_s(settings.retry_delays))
                lines.append((True, "topology", f"4 exchanges and {count} queues exist or were declared"))
    except BROKER_ERRORS as error:
        lines.append((False, "broker", f"cannot connect to {where}: {_describe(error, settings)}"))
        lines.append((False, "topology", "not checked: no broker connection"))
    lines.append(await _check_dialnexa(settings))
    return lines


async def _check_dialnexa(settings: Settings) -> tuple[bool, str, str]:
    """One cancel of the probe id, which no workflow has: 404 means the key may cancel; a key
    that may only read fails here (401/403), as it would on every real cancel."""
    base = str(settings.dialnexa_base_url)
    http = AiohttpSession(
        base,
        settings.dialnexa_api_key,
        connect_timeout_s=settings.http_connect_timeout_s,
        read_timeout_s=settings.http_read_timeout_s,
        max_connections=1,
    )
    client = DialNexaClient(http, Metrics.build(CollectorRegistry()))
    try:
        await client.probe(settings.auth_probe_workflow_id)
    except AuthError as error:
        if error.status_code == 403:
            return False, "dialnexa", f"{base} does not let the API key cancel workflows (403)"
        return False, "dialnexa", f"{base} rejected the API key ({error.status_code})"
    except DialNexaError as error:
        return False, "dialnexa", f"{base}: {_describe(error, settings)}"
    finally:
        await http.aclose()
    return True, "dialnexa", f"{base} accepted the API key for cancelling"


# --- shared ---------------------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def _channel(settings: CommonSettings, role: str) -> AsyncIterator[AbstractChannel]:
    """One connection and one channel with publisher confirms, closed on the way out."""
    connection = await connect(settings, role)
    try:
        channel = await connection.channel(publisher_confirms=True, on_return_raises=True)
        yield channel
    finally:
        await connection.close()


def _describe(error: BaseException, settings: CommonSettings) -> str:
    """A one-line description with every configured secret masked."""
    if isinstance(error, PublishRefused) and error.reason == "unroutable":
        text = "unroutable: no queue is bound for it (has the worker or `check` declared the topology?)"
    else:
        text = f"{type(error).__name__}: {error}" if str(error) else type(error).__name__
    for secret in secret_values(settings):
        text = text.replace(secret, MASK)
    return mask(text, 300)  # an encoder's error can quote a header's value
