"""Broker glue: connect, declare, consume, run the core per message, and settle each message.

`Worker._settle` is the one place that turns an `Outcome` into ack, retry, dead-letter or requeue.
`Worker.run` supervises the connection: it reconnects with capped backoff when the broker goes
away, pauses consumption while DialNexa rejects our credentials (probing until the key works),
and on stop cancels the consumers, drains in-flight messages for a bounded time and closes.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import socket
import time
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import partial
from typing import Any

import aio_pika
import aiormq
import stamina
import structlog
from aio_pika.abc import AbstractConnection, AbstractIncomingMessage, AbstractQueue

from . import topology
from .capacity import Capacity
from .config import Settings
from .dialnexa import AuthError, CancelResult, DialNexaError, RejectedError
from .events import (
    COMPLAINT_RECEIVED,
    InboundEvent,
    InvalidEvent,
    parse,
    peek_type,
    trigger_of,
    workflow_cancelled,
)
from .handler import (
    Completed,
    CredentialsRejected,
    DeadLetter,
    Outcome,
    PublishRefused,
    RetryLater,
    RetryPolicy,
    handle,
)
from .health import Readiness
from .metrics import Metrics
from .publisher import HeaderValue, Publisher

HEADER_REASON = "x-canceller-reason"
HEADER_ERROR = "x-canceller-error"
HEADER_ATTEMPTS = "x-canceller-attempts"
HEADER_DONE = "x-canceller-done"
HEADER_FIRST_SEEN = "x-canceller-first-seen-ms"
HEADER_QUEUE = topology.HEADER_QUEUE

log = structlog.get_logger("workflow_canceller.consumer")


class BrokerLost(Exception):
    """The connection, a channel or a consumer went away: start a new session."""


BROKER_ERRORS = (
    aiormq.exceptions.AMQPError,
    aio_pika.exceptions.AMQPException,
    OSError,  # ConnectionError is one
    TimeoutError,
)
SESSION_ERRORS = (BrokerLost, *BROKER_ERRORS)


# --- retry state carried in headers ------------------------------------------------------------


def encode_done(done: frozenset[int], total: int) -> str:
    """`<total>:<hex bitmap>` of the workflow indexes already settled."""
    bits = 0
    for index in done:
        bits |= 1 << index
    return f"{total}:{bits:x}"


def decode_done(value: object, total: int) -> frozenset[int]:
    """The settled indexes, or none when the header is absent or was written for another body."""
    if not isinstance(value, str | bytes):
        return frozenset()
    text = value.decode() if isinstance(value, bytes) else value
    count, _, bitmap = text.partition(":")
    try:
        if int(count) != total:
            return frozenset()
        bits = int(bitmap, 16)
    except ValueError:
        return frozenset()
    return frozenset(i for i in range(total) if bits >> i & 1)


@dataclass(frozen=True, slots=True)
class Delivery:
    """What the headers of one delivery say about earlier attempts."""

    attempt: int
    first_seen_ms: int
    done_header: object

    @classmethod
    def of(cls, message: AbstractIncomingMessage, now_ms: int) -> Delivery:
        headers = message.headers or {}
        # Retry state is trusted only on our own retry copies (they name their queue); a message
        # replayed from the DLQ starts afresh.
        if HEADER_QUEUE not in headers:
            return cls(attempt=1, first_seen_ms=now_ms, done_header=None)
        return cls(
            attempt=_int(headers.get(HEADER_ATTEMPTS)) + 1,
            first_seen_ms=_int(headers.get(HEADER_FIRST_SEEN)) or now_ms,
            done_header=headers.get(HEADER_DONE),
        )


def _int(value: object) -> int:
    try:
        return int(str(value))
    except (TypeError, ValueError):
        return 0


# --- the worker ----------------------------------------------------------------------------------


class Worker:
    def __init__(
        self,
        settings: Settings,
        capacity: Capacity,
        metrics: Metrics,
        readiness: Readiness,
    ) -> None:
        self._settings = settings
        self._api = capacity.client
        self._capacity = capacity
        self._metrics = metrics
        self._readiness = readiness
        self._policy = RetryPolicy(
            broker_delays_s=settings.retry_delays,
            call_attempts=settings.call_attempts,
            call_budget_s=settings.call_retry_budget_s,
            backoff_initial_s=settings.call_backoff_initial_s,
            backoff_max_s=settings.call_backoff_max_s,
            max_retry_after_wait_s=settings.max_retry_after_wait_s,
        )
        self._inflight: set[asyncio.Task[None]] = set()
        self._credentials_rejected = asyncio.Event()
        self._lost = asyncio.Event()  # replaced at every session

    # --- supervision -------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        """Consume until `stop` is set, reconnecting whenever the broker goes away."""
        backoff_s = self._settings.reconnect_initial_s
        while not stop.is_set():
            connected_at = time.monotonic()
            try:
                await self._session(stop)
            except SESSION_ERRORS as error:
                self._readiness.stopped()
                self._metrics.broker_reconnects.inc()
                if time.monotonic() - connected_at > 30:
                    backoff_s = self._settings.reconnect_initial_s
                log.warning("broker.lost", error=_short(error), retry_in_s=round(backoff_s, 2))
                await _wait_for(stop, backoff_s * random.uniform(0.8, 1.2))  # noqa: S311  # jitter, not crypto
                backoff_s = min(backoff_s * 2, self._settings.reconnect_max_s)

    async def _session(self, stop: asyncio.Event) -> None:
        settings = self._settings
        connection = await aio_pika.connect(
            settings.amqp_url.get_secret_value(),
            timeout=settings.publish_timeout_s,
            client_properties={"connection_name": f"workflow-canceller@{socket.gethostname()}"},
        )
        self._lost = lost = asyncio.Event()
        try:
            connection.close_callbacks.add(lambda *_: lost.set())
            publisher = await self._open_publisher(connection, lost)
            queues = [await self._open_queue(connection, name, lost) for name in settings.input_queues]
            log.info("broker.connected", queues=list(settings.input_queues))
            while True:
                tags = await self._consume(queues, publisher)
                woke = await _first(stop, lost, self._credentials_rejected)
                if woke is lost:
                    raise BrokerLost("connection or channel closed")
                await self._cancel(queues, tags)
                if woke is stop:
                    await self._drain()
                    return
                if not await self._wait_for_credentials(stop, lost):
                    continue  # stop or loss: the loop notices on the next wake-up
        finally:
            self._readiness.stopped()
            await self._abandon_inflight()
            await _close_quietly(connection)

    async def _open_publisher(self, connection: AbstractConnection, lost: asyncio.Event) -> Publisher:
        channel = await connection.channel(publisher_confirms=True, on_return_raises=True)
        channel.close_callbacks.add(lambda *_: lost.set())
        exchanges = await topology.declare(channel, self._settings)
        return Publisher(
            channel,
            exchanges.output,
            exchanges.dead_letter,
            output_routing_key=self._settings.output_routing_key,
            timeout_s=self._settings.publish_timeout_s,
        )

    async def _open_queue(
        self, connection: AbstractConnection, name: str, lost: asyncio.Event
    ) -> AbstractQueue:
        """One channel per input queue, so each has its own prefetch window."""
        channel = await connection.channel(publisher_confirms=False)

        def closed(*_: Any) -> None:
            self._readiness.consuming(name, False)
            lost.set()

        channel.close_callbacks.add(closed)
        underlay = await channel.get_underlay_channel()
        underlay.on_consumer_cancel_callbacks.add(closed)  # e.g. the queue was deleted
        await channel.set_qos(prefetch_count=self._settings.prefetch)
        return await channel.get_queue(name, ensure=False)

    async def _consume(self, queues: list[AbstractQueue], publisher: Publisher) -> list[str]:
        tags = []
        for queue in queues:
            callback = partial(self._on_message, publisher=publisher, queue=queue.name)
            tags.append(await queue.consume(callback))
            self._readiness.consuming(queue.name, True)
        log.info("consumer.started", prefetch=self._settings.prefetch)
        return tags

    async def _cancel(self, queues: list[AbstractQueue], tags: list[str]) -> None:
        for queue, tag in zip(queues, tags, strict=True):
            self._readiness.consuming(queue.name, False)
            await queue.cancel(tag)
        log.info("consumer.stopped")

    async def _wait_for_credentials(self, stop: asyncio.Event, lost: asyncio.Event) -> bool:
        """Paused: probe DialNexa with backoff until the key works. False if stopped or lost first."""
        self._readiness.pause("dialnexa rejected the API key")
        self._metrics.credentials_valid.set(0)
        log.error("consumer.paused", reason="credentials_rejected")
        await self._drain()  # in-flight messages hit the same 401/403 and are given back
        probe = asyncio.ensure_future(self._probe_until_accepted())
        try:
            woke = await _first(stop, lost, probe)
        finally:
            probe.cancel()
        if woke is not probe:
            return False
        self._credentials_rejected.clear()
        self._metrics.credentials_valid.set(1)
        self._readiness.resume()
        log.info("consumer.resumed", reason="credentials_accepted")
        return True

    async def _probe_until_accepted(self) -> None:
        settings = self._settings
        async for attempt in stamina.retry_context(
            on=DialNexaError,
            attempts=None,  # paused until the key works; stop or broker loss end the wait
            timeout=None,
            wait_initial=settings.auth_probe_initial_s,
            wait_max=settings.auth_probe_max_s,
            wait_jitter=settings.auth_probe_initial_s,
        ):
            with attempt:
                try:
                    await self._api.probe(settings.auth_probe_workflow_id)
                except RejectedError:
                    return  # any answer but 401/403 means the key is accepted
                except AuthError:
                    log.warning("credentials.probe_rejected", attempt=attempt.num)
                    raise

    async def _drain(self) -> None:
        """Wait a bounded time for in-flight messages; the rest are cancelled and redelivered."""
        if not self._inflight:
            return
        log.info("consumer.draining", inflight=len(self._inflight), timeout_s=self._settings.drain_timeout_s)
        _done, pending = await asyncio.wait(set(self._inflight), timeout=self._settings.drain_timeout_s)
        if pending:
            log.warning("consumer.drain_timeout", requeued=len(pending))

    async def _abandon_inflight(self) -> None:
        """Cancel what is still running; unacked messages go back to the queue with the channel."""
        tasks = set(self._inflight)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks)

    # --- one message -----------------------------------------------------------------------------

    async def _on_message(
        self, message: AbstractIncomingMessage, *, publisher: Publisher, queue: str
    ) -> None:
        task = asyncio.create_task(self._process(message, publisher, queue))
        self._inflight.add(task)
        task.add_done_callback(self._inflight.discard)

    async def _process(self, message: AbstractIncomingMessage, publisher: Publisher, queue: str) -> None:
        started = time.perf_counter()
        delivery = Delivery.of(message, int(time.time() * 1000))
        self._metrics.inflight_events.inc()
        structlog.contextvars.bind_contextvars(message_id=message.message_id, attempt=delivery.attempt)
        try:
            event, outcome = await self._outcome_of(message, publisher, delivery)
            result = await self._settle(message, outcome, publisher, queue, delivery)
        except asyncio.CancelledError:
            log.info("event.abandoned", reason="shutdown_or_broker_loss")
            raise
        except SESSION_ERRORS as error:
            log.warning("event.unsettled", error=_short(error), note="reconnecting; the broker redelivers it")
            self._lost.set()
            return
        finally:
            self._metrics.inflight_events.dec()
        self._observe(message, event, outcome, result, delivery, started)

    async def _outcome_of(
        self, message: AbstractIncomingMessage, publisher: Publisher, delivery: Delivery
    ) -> tuple[InboundEvent | None, Outcome]:
        try:
            event = parse(message.body, message.content_type, self._settings.max_body_bytes)
        except InvalidEvent as error:
            self._metrics.events_received.labels(peek_type(message.body)).inc()
            return None, DeadLetter("invalid", str(error))
        self._metrics.events_received.labels(event.type).inc()
        structlog.contextvars.bind_contextvars(event_id=event.id, event_type=event.type)
        done = decode_done(delivery.done_header, len(event.data.workflow_ids))
        try:
            outcome = await handle(
                event,
                self._capacity.lane("complaint" if event.type == COMPLAINT_RECEIVED else "campaign"),
                partial(self._emit, publisher, event),
                policy=self._policy,
                attempt=delivery.attempt,
                done=done,
                parallel=self._settings.concurrency,
            )
        except Exception as error:  # a bug must not crash the worker: retry, then DLQ
            leaves = _leaves(error)
            if any(isinstance(leaf, BROKER_ERRORS) for leaf in leaves):
                raise BrokerLost("publishing failed") from error
            log.error("event.internal_error", error=_short(leaves[0]), exc_info=leaves[0])
            text = f"internal error: {type(leaves[0]).__name__}"
            delay = self._policy.broker_delay(delivery.attempt, None)
            if delay is None:
                return event, DeadLetter("exhausted", text)
            return event, RetryLater(delay, done, text, total=len(event.data.workflow_ids))
        return event, outcome

    def _observe(
        self,
        message: AbstractIncomingMessage,
        event: InboundEvent | None,
        outcome: Outcome,
        result: str,
        delivery: Delivery,
        started: float,
    ) -> None:
        """Metrics and the one summary log line of a settled message."""
        metrics = self._metrics
        event_type = event.type if event else peek_type(message.body)
        duration_s = time.perf_counter() - started
        metrics.events_processed.labels(event_type, result).inc()
        metrics.event_processing_duration.labels(event_type).observe(duration_s)
        counts: Counter[str] = Counter(r.outcome for r in outcome.results)
        failed = outcome.failed if isinstance(outcome, DeadLetter) else 0
        if failed:
            counts["failed"] = failed
        for name, count in counts.items():
            metrics.workflow_cancellations.labels(event_type, name).inc(count)
        if event is not None and isinstance(outcome, Completed):
            born_s = event.time.timestamp() if event.time else delivery.first_seen_ms / 1000
            metrics.event_age.labels(event_type).observe(max(0.0, time.time() - born_s))
        log.info(
            "event.settled",
            event_type=event_type,
            result=result,
            reason=getattr(outcome, "reason", None),
            error=getattr(outcome, "error", None),
            workflows=len(event.data.workflow_ids) if event else 0,
            duration_ms=round(duration_s * 1000, 1),
            **counts,
        )
        structlog.contextvars.clear_contextvars()

    async def _emit(self, publisher: Publisher, event: InboundEvent, result: CancelResult) -> None:
        if result.outcome == "not_found":  # the core never emits these; nothing to publish
            return
        confirmed_at = datetime.now(UTC)
        body = workflow_cancelled(
            workflow_id=result.workflow_id,
            outcome=result.outcome,
            status=result.status,
            trigger=trigger_of(event),
            source=self._settings.event_source,
            confirmed_at=confirmed_at,
        )
        await publisher.workflow_cancelled(body, result.workflow_id, confirmed_at)
        self._metrics.events_published.labels("workflow-cancelled").inc()
        log.debug("workflow.published", workflow_id=result.workflow_id, outcome=result.outcome)

    async def _settle(
        self,
        message: AbstractIncomingMessage,
        outcome: Outcome,
        publisher: Publisher,
        queue: str,
        delivery: Delivery,
    ) -> str:
        """The one place an outcome becomes ack / retry / dead-letter / requeue."""
        try:
            match outcome:
                case Completed():
                    await message.ack()
                    return "acked"
                case RetryLater(delay_s=delay_s, done=done, error=error):
                    headers: dict[str, HeaderValue] = {
                        HEADER_QUEUE: queue,
                        HEADER_ATTEMPTS: delivery.attempt,
                        HEADER_FIRST_SEEN: delivery.first_seen_ms,
                        HEADER_ERROR: error,
                        HEADER_DONE: encode_done(done, outcome.total),
                    }
                    await publisher.to_delay_queue(
                        message, topology.delay_queue_for(self._settings, delay_s), headers
                    )
                    await message.ack()
                    return "retried"
                case DeadLetter(reason=reason, error=error):
                    await publisher.to_dead_letter(
                        message,
                        {HEADER_REASON: reason, HEADER_ERROR: error, HEADER_ATTEMPTS: delivery.attempt},
                    )
                    await message.ack()
                    self._metrics.dead_lettered.labels(reason).inc()
                    return "dead_lettered"
                case CredentialsRejected():
                    await message.nack(requeue=True)
                    self._credentials_rejected.set()
                    return "requeued"
        except PublishRefused as error:
            log.error("event.settle_refused", error=str(error))
            await message.nack(requeue=True)
            return "requeued"
        raise AssertionError(f"unknown outcome {outcome!r}")  # pragma: no cover


# --- helpers ---------------------------------------------------------------------------------


def _leaves(error: BaseException) -> list[BaseException]:
    """The plain exceptions inside (possibly nested) exception groups."""
    if isinstance(error, BaseExceptionGroup):
        return [leaf for inner in error.exceptions for leaf in _leaves(inner)]
    return [error]


def _short(error: BaseException) -> str:
    return f"{type(error).__name__}: {error}"[:200]


async def _wait_for(event: asyncio.Event, timeout_s: float) -> None:
    """Sleep up to `timeout_s`, waking early when `event` is set."""
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(event.wait(), timeout_s)


async def _first(*waitables: asyncio.Event | asyncio.Future[Any]) -> asyncio.Event | asyncio.Future[Any]:
    """Wait until one of the events is set (or the future done); return which."""
    tasks: dict[asyncio.Future[Any], asyncio.Event | asyncio.Future[Any]] = {}
    for waitable in waitables:
        future = asyncio.ensure_future(waitable.wait()) if isinstance(waitable, asyncio.Event) else waitable
        tasks[future] = waitable
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for future, waitable in tasks.items():
            if future is not waitable:
                future.cancel()
    return tasks[next(iter(done))]


async def _close_quietly(connection: AbstractConnection) -> None:
    try:
        await asyncio.wait_for(connection.close(), 5)
    except (*BROKER_ERRORS, RuntimeError) as error:  # closing twice is harmless
        log.debug("broker.close_failed", error=_short(error))
