"""The dead-letter queue as an operator sees it: inspect, replay and purge (`workflow-canceller dlq`).

AMQP has no way to read a queue without taking from it, so every operation takes each message
(`basic.get`, unacknowledged) at most once, decides, and gives back what it did not act on in one
`nack(requeue)` at the end: if the command dies, the broker gives back everything still unacked.
A replay republishes a message to its input queue and waits for the broker's confirm before it
acks (removes) the dead-lettered copy, so an interruption can leave a duplicate, never a loss.
A message the worker dead-lettered naming the workflows that failed (`x-canceller-failed`) is
replayed for those workflows only: the others were settled, and are not called again.

Only a summary of each message is kept and shown: reason, error, attempts, event id and type,
age. Bodies are never printed, and digit runs that look like phone numbers are masked.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

import orjson
from aio_pika.abc import AbstractChannel, AbstractIncomingMessage, AbstractQueue

from ..broker.publisher import HeaderValue, copy_message
from ..config import CommonSettings
from ..core.events import TYPE_NAME_SHAPE
from ..observe.logs import mask_shapes
from ..retry import (
    HEADER_ATTEMPTS,
    HEADER_DEAD_LETTERED,
    HEADER_DONE,
    HEADER_ERROR,
    HEADER_FAILED,
    HEADER_FIRST_SEEN,
    HEADER_NOT_BEFORE,
    HEADER_QUEUE,
    HEADER_REASON,
    HEADER_REPLAYED_AT,
    HEADER_REPLAYS,
    HEADER_SOURCE_QUEUE,
    decode_done,
    encode_done,
    header_int,
)

REASONS = ("invalid", "permanent", "exhausted", "delivery-limit", "rejected")
UNKNOWN = "unknown"
# Headers a replayed message must not carry: the retry state of its earlier life and the broker's
# own dead-letter bookkeeping. Its attempt count starts afresh.
_STALE_HEADERS = frozenset(
    {
        HEADER_REASON,
        HEADER_ERROR,
        HEADER_ATTEMPTS,
        HEADER_DONE,
        HEADER_FAILED,
        HEADER_FIRST_SEEN,
        HEADER_NOT_BEFORE,
        HEADER_QUEUE,
        HEADER_SOURCE_QUEUE,
        HEADER_DEAD_LETTERED,
        "x-death",
        "x-first-death-exchange",
        "x-first-death-queue",
        "x-first-death-reason",
        "x-last-death-exchange",
        "x-last-death-queue",
        "x-last-death-reason",
        "x-delivery-count",
    }
)
_TEXT_LIMIT = 200


def mask(text: str, limit: int = _TEXT_LIMIT) -> str:
    """`text` on one line, printable, bounded, with secret shapes and phone numbers masked as in
    the logs (no escape sequence or newline from a message reaches the operator's terminal)."""
    printable = "".join(c if c.isprintable() else " " for c in text[: limit * 4])
    flat = " ".join(printable.split())
    return mask_shapes(flat)[:limit]


@dataclass(frozen=True, slots=True)
class Letter:
    """What one dead-lettered message says about itself (never its body)."""

    reason: str
    error: str
    attempts: int | None
    event_id: str | None
    event_type: str
    source_queue: str | None
    dead_lettered_at: datetime | None
    replays: int
    # The workflows that failed, when the worker named them: a replay calls only these.
    failed_workflows: tuple[str, ...] | None = None
    settled: frozenset[int] = frozenset()
    total: int = 0

    def age_s(self, now: datetime) -> float | None:
        """Seconds since it was dead-lettered, when known."""
        if self.dead_lettered_at is None:
            return None
        return max(0.0, (now - self.dead_lettered_at).total_seconds())

    def as_dict(self, now: datetime) -> dict[str, Any]:
        """The summary as plain JSON-able values."""
        data = asdict(self)
        del data["settled"], data["total"]
        if self.failed_workflows is not None:
            data["failed_workflows"] = list(self.failed_workflows[:20])
            data["failed"] = len(self.failed_workflows)
        data["dead_lettered_at"] = self.dead_lettered_at.isoformat() if self.dead_lettered_at else None
        data["age_s"] = None if (age := self.age_s(now)) is None else round(age, 1)
        return data


@dataclass(frozen=True, slots=True)
class Filter:
    """Which dead-lettered messages a command acts on; an empty filter matches all."""

    reasons: frozenset[str] = frozenset()
    event_types: frozenset[str] = frozenset()
    older_than_s: float | None = None
    newer_than_s: float | None = None

    def matches(self, letter: Letter, now: datetime) -> bool:
        """True when `letter` passes every given condition (an unknown age passes no age filter)."""
        if self.reasons and letter.reason not in self.reasons:
            return False
        if self.event_types and letter.event_type not in self.event_types:
            return False
        if self.older_than_s is None and self.newer_than_s is None:
            return True
        age = letter.age_s(now)
        if age is None:
            return False
        if self.older_than_s is not None and age < self.older_than_s:
            return False
        return self.newer_than_s is None or age <= self.newer_than_s


def read_letter(message: AbstractIncomingMessage) -> Letter:
    """Summarise a dead-lettered message from its headers and the envelope fields of its body."""
    headers: Mapping[str, Any] = message.headers or {}
    death = _first_death(headers)
    reason = _text(headers.get(HEADER_REASON))
    if not reason and death is not None:
        # Dead-lettered by the broker itself: the input queue's delivery limit (a crash loop).
        reason = (
            "delivery-limit" if _text(death.get("reason")) == "delivery_limit" else _text(death.get("reason"))
        )
    event_id, event_type, workflow_ids = _envelope(message.body)
    failed_workflows, settled = _failures(headers, reason, workflow_ids)
    source = _text(headers.get(HEADER_SOURCE_QUEUE)) or (_text(death.get("queue")) if death else "")
    return Letter(
        reason=mask(reason, 32) or UNKNOWN,
        error=mask(_text(headers.get(HEADER_ERROR))),
        attempts=header_int(headers.get(HEADER_ATTEMPTS)),
        event_id=mask(event_id, 256) if event_id else None,
        event_type=event_type if event_type and TYPE_NAME_SHAPE.fullmatch(event_type) else UNKNOWN,
        source_queue=mask(source, 255) or None,
        dead_lettered_at=_dead_lettered_at(headers, death, message),
        replays=header_int(headers.get(HEADER_REPLAYS)) or 0,
        failed_workflows=failed_workflows,
        settled=settled,
        total=len(workflow_ids),
    )


def _failures(
    headers: Mapping[str, Any], reason: str, workflow_ids: list[str]
) -> tuple[tuple[str, ...] | None, frozenset[int]]:
    """Which workflows failed and which were settled, from the worker's own DLQ copy (it carries
    its dead-letter time and a reason it writes); nothing for any other message."""
    if reason not in ("permanent", "exhausted") or HEADER_DEAD_LETTERED not in headers:
        return None, frozenset()
    total = len(workflow_ids)
    failed = decode_done(headers.get(HEADER_FAILED), total)
    if not failed:
        return None, frozenset()
    settled = decode_done(headers.get(HEADER_DONE), total) - failed
    return tuple(mask(workflow_ids[i], 128) for i in sorted(failed)), settled


def _first_death(headers: Mapping[str, Any]) -> Mapping[str, Any] | None:
    deaths = headers.get("x-death")
    if isinstance(deaths, list) and deaths and isinstance(deaths[0], Mapping):
        return deaths[0]
    return None


def _dead_lettered_at(
    headers: Mapping[str, Any], death: Mapping[str, Any] | None, message: AbstractIncomingMessage
) -> datetime | None:
    millis = header_int(headers.get(HEADER_DEAD_LETTERED))
    if millis:
        try:
            return datetime.fromtimestamp(millis / 1000, UTC)
        except (ValueError, OverflowError, OSError):  # a header no clock can mean: age unknown
            return None
    stamp = death.get("time") if death else None
    if not isinstance(stamp, datetime):
        stamp = message.timestamp
    if isinstance(stamp, datetime):
        return stamp if stamp.tzinfo else stamp.replace(tzinfo=UTC)
    return None


def _envelope(body: bytes) -> tuple[str | None, str | None, list[str]]:
    """The CloudEvent `id` and `type`, when the body is a JSON object that has them as strings,
    and the workflow ids its data names (empty when it names none as a list of strings)."""
    try:
        document = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None, None, []
    if not isinstance(document, dict):
        return None, None, []
    event_id, event_type = document.get("id"), document.get("type")
    data = document.get("data")
    ids = data.get("workflow_ids") if isinstance(data, dict) else None
    workflow_ids = ids if isinstance(ids, list) and all(isinstance(i, str) for i in ids) else []
    return (
        event_id if isinstance(event_id, str) else None,
        event_type if isinstance(event_type, str) and len(event_type) <= 64 else None,
        workflow_ids,
    )


def _text(value: object) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return value if isinstance(value, str) else ""


@dataclass(slots=True)
class Summary:
    """What `dlq list` reports: counts over every message seen, and the newest ones."""

    queue: str
    count: int = 0
    by_reason: Counter[str] = field(default_factory=Counter)
    by_event_type: Counter[str] = field(default_factory=Counter)
    by_reason_and_type: Counter[tuple[str, str]] = field(default_factory=Counter)
    newest: list[Letter] = field(default_factory=list)


@dataclass(slots=True)
class Moved:
    """What `dlq replay` or `dlq purge` did (or, in a dry run, would do)."""

    matched: list[Letter] = field(default_factory=list)
    done: list[Letter] = field(default_factory=list)
    skipped: list[tuple[Letter, str]] = field(default_factory=list)
    targets: Counter[str] = field(default_factory=Counter)


AfterPublish = Callable[[Letter], Awaitable[None]]


async def _give_back(last: AbstractIncomingMessage | None) -> None:
    """Return every unacked message to the DLQ, in order, with one frame: `multiple` covers each
    unacked delivery up to `last`, the last one left (acked ones are settled already).
    A nack has no confirm: the messages are ready again a moment later, not at return."""
    if last is not None:
        await last.nack(multiple=True, requeue=True)


class DeadLetters:
    """Operations on the DLQ over one channel with publisher confirms."""

    def __init__(self, channel: AbstractChannel, settings: CommonSettings) -> None:
        self._channel = channel
        self._settings = settings

    async def _queue(self) -> AbstractQueue:
        return await self._channel.get_queue(self._settings.dead_letter_queue, ensure=True)

    async def _scan(self) -> AsyncIterator[AbstractIncomingMessage]:
        """The messages in the DLQ at this moment, one at a time, taken unacked.

        Bounded by the count at the start, so messages dead-lettered meanwhile do not keep it
        going. The caller keeps only what it needs (a summary, the last message it leaves), so a
        large DLQ is not held in memory.
        """
        queue = await self._queue()
        declared = await self._channel.declare_queue(queue.name, passive=True)
        expected = declared.declaration_result.message_count or 0
        for _ in range(expected):
            message = await queue.get(no_ack=False, fail=False, timeout=self._settings.publish_timeout_s)
            if message is None:
                return
            yield message

    async def summary(self, limit: int) -> Summary:
        """Counts by reason and event type, and the `limit` most recently dead-lettered messages."""
        result = Summary(self._settings.dead_letter_queue)
        letters: list[Letter] = []
        last: AbstractIncomingMessage | None = None
        try:
            async for message in self._scan():
                last = message
                letter = read_letter(message)
                result.count += 1
                result.by_reason[letter.reason] += 1
                result.by_event_type[letter.event_type] += 1
                result.by_reason_and_type[(letter.reason, letter.event_type)] += 1
                letters.append(letter)
        finally:
            await _give_back(last)
        oldest = datetime.min.replace(tzinfo=UTC)
        result.newest = sorted(letters, key=lambda x: x.dead_lettered_at or oldest, reverse=True)[:limit]
        return result

    async def replay(
        self,
        selection: Filter,
        *,
        limit: int | None,
        dry_run: bool,
        moved: Moved | None = None,
        after_publish: AfterPublish | None = None,
    ) -> Moved:
        """Republish matching messages to their input queues (confirmed), then remove them.

        Progress goes into `moved` as it happens, so a caller still knows what was done when a
        later message fails.
        """
        return await self._act(selection, limit, dry_run, moved or Moved(), self._republish, after_publish)

    async def purge(
        self, selection: Filter, *, limit: int | None, dry_run: bool, moved: Moved | None = None
    ) -> Moved:
        """Remove matching messages for good."""
        return await self._act(selection, limit, dry_run, moved or Moved(), None, None)

    async def _act(
        self,
        selection: Filter,
        limit: int | None,
        dry_run: bool,
        moved: Moved,
        republish: Callable[[AbstractIncomingMessage, Letter, str], Awaitable[None]] | None,
        after_publish: AfterPublish | None,
    ) -> Moved:
        now = datetime.now(UTC)
        kept: AbstractIncomingMessage | None = None  # the last one left unacked
        try:
            async for message in self._scan():
                letter = read_letter(message)
                if not selection.matches(letter, now):
                    kept = message
                    continue
                target = self.target_queue(letter) if republish else ""
                if republish and target is None:
                    moved.skipped.append((letter, "no input queue known for this message"))
                    kept = message
                    continue
                moved.matched.append(letter)
                if dry_run:
                    kept = message
                    moved.targets[target or "(deleted)"] += 1
                else:
                    if republish and target:
                        await republish(message, letter, target)
                        if after_publish is not None:
                            await after_publish(letter)
                    # Acking one of several unacked messages is fine; the rest are given back below.
                    await message.ack()
                    moved.done.append(letter)
                    moved.targets[target or "(deleted)"] += 1
                if limit is not None and len(moved.matched) >= limit:
                    break  # the rest were never taken: nothing to give back for them
        finally:
            # Everything not acked is given back; on an exception the channel's close would do it too.
            await _give_back(kept)
        return moved

    def target_queue(self, letter: Letter) -> str | None:
        """The input queue a message came from: its recorded queue, else the one for its type."""
        queues = self._settings.input_queues
        if letter.source_queue in queues:
            return letter.source_queue
        for name, routing_key in queues.items():
            if routing_key == letter.event_type:
                return name
        return None

    async def _republish(self, message: AbstractIncomingMessage, letter: Letter, target: str) -> None:
        """Publish a fresh copy to `target` through the default exchange and wait for the confirm."""
        audit: dict[str, HeaderValue] = {
            HEADER_REPLAYED_AT: datetime.now(UTC).isoformat(timespec="seconds"),
            HEADER_REPLAYS: letter.replays + 1,
        }
        if letter.failed_workflows and letter.settled:
            # Only the failed workflows: the copy goes through the requeue exchange (the one way
            # the worker trusts what a message says is already settled) with the rest marked done.
            audit[HEADER_QUEUE] = target
            audit[HEADER_ATTEMPTS] = 0
            audit[HEADER_DONE] = encode_done(letter.settled, letter.total)
            copy = copy_message(message, audit, drop=_STALE_HEADERS)
            requeue = await self._channel.get_exchange(self._settings.requeue_exchange, ensure=False)
            await requeue.publish(copy, "", mandatory=True, timeout=self._settings.publish_timeout_s)
            return
        copy = copy_message(message, audit, drop=_STALE_HEADERS)
        await self._channel.default_exchange.publish(
            copy, target, mandatory=True, timeout=self._settings.publish_timeout_s
        )
