"""The worker's broker sessions: connect, declare, consume, pause, drain, reconnect.

`Worker.run` reconnects with capped, jittered backoff when the broker goes away, pauses
consumption while DialNexa rejects our credentials (probing until the key may cancel, with a
delay that grows each time a resumed key is rejected again), and on stop cancels the consumers,
drains in-flight messages for a bounded time and closes. Each message is handed to the
`Intake` in a task of its own, tracked for the drain; what the processor settled tells the
worker whether to pause (credentials rejected) or to start a new session (abandoned).
"""

from __future__ import annotations

import asyncio
import time
from functools import partial
from typing import Any

import stamina
import structlog
from aio_pika.abc import AbstractConnection, AbstractIncomingMessage, AbstractQueue
from opentelemetry.trace import Span, Status, StatusCode

from ..config import Settings
from ..core.events import WORKFLOW_CANCELLED
from ..core.outcomes import Abandon, CredentialsRejected, DeadLetter, Outcome
from ..core.ports import AuthError, DialNexaError
from ..dialnexa.gateway import Gateway
from ..observe.logs import short
from ..observe.metrics import Metrics
from ..observe.probes import Readiness
from ..observe.tracing import Tracing
from . import topology
from .connection import SESSION_ERRORS, BrokerLost, Reconnects, close_quietly, connect, first
from .intake import Intake
from .publisher import Publisher

log = structlog.get_logger("workflow_canceller.consumer")


def traced(span: Span, outcome: Outcome) -> None:
    """What the delivery came to, on its `process` span; an error status when it was dead-lettered."""
    span.set_attribute("canceller.outcome", type(outcome).__name__)
    if isinstance(outcome, DeadLetter):
        span.set_attribute("error.type", outcome.reason)
        span.set_status(Status(StatusCode.ERROR, outcome.error[:200]))


class Worker:
    def __init__(
        self,
        settings: Settings,
        gateway: Gateway,
        metrics: Metrics,
        readiness: Readiness,
        tracing: Tracing | None = None,
    ) -> None:
        self._settings = settings
        self._tracing = tracing or Tracing()
        self._api = gateway.client
        self._gateway = gateway
        self._metrics = metrics
        self._readiness = readiness
        self._intake = Intake(settings, gateway, metrics)
        self._inflight: set[asyncio.Task[Any]] = set()
        # Read at scrape time from the tasks tracked for the drain: nothing to update per message.
        metrics.inflight_events.set_function(lambda: len(self._inflight))
        self._lost = asyncio.Event()  # replaced at every session
        self._credentials_rejected = asyncio.Event()
        # The first probe's wait; doubles when a key that was accepted is rejected again soon after.
        self._probe_wait_s = settings.auth_probe_initial_s
        self._resumed_at: float | None = None

    # --- supervision -------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        """Consume until `stop` is set, reconnecting whenever the broker goes away."""
        reconnects = Reconnects(self._settings.reconnect_initial_s, self._settings.reconnect_max_s)
        session = partial(self._session, stop, reconnects)
        async for error, wait_s in reconnects.losses(stop, session, SESSION_ERRORS):
            self._readiness.stopped()
            self._metrics.broker_reconnects.inc()
            log.warning("broker.lost", error=short(error), retry_in_s=round(wait_s, 2))

    async def _session(self, stop: asyncio.Event, reconnects: Reconnects) -> None:
        settings = self._settings
        connection = await connect(settings, "worker")
        self._lost = lost = asyncio.Event()
        try:
            connection.close_callbacks.add(lambda *_: lost.set())
            publisher = await self._open_publisher(connection, lost)
            queues = [await self._open_queue(connection, name, lost) for name in settings.input_queues]
            log.info("broker.connected", queues=list(settings.input_queues))
            reconnects.up()
            while True:
                tags = await self._consume(queues, publisher)
                woke = await first(stop, lost, self._credentials_rejected)
                if woke is lost:
                    raise BrokerLost("connection or channel closed")
                await self._cancel(queues, tags)
                if woke is stop:
                    # No call starts any more: in-flight messages hand what is left on to a
                    # continuation and settle, well within the drain time.
                    self._gateway.close()
                    await self._drain()
                    return
                if not await self._wait_for_credentials(stop, lost):
                    if lost.is_set():
                        raise BrokerLost("connection or channel closed while paused")
                    return  # stopped while paused: nothing is in flight
        except RuntimeError as error:
            # aio-pika raises a plain RuntimeError for a channel asked of a connection the broker
            # just closed (a cut during setup): a lost session, not a reason to stop the worker.
            if lost.is_set() or connection.is_closed:
                raise BrokerLost(f"connection closed during setup: {short(error)}") from error
            raise
        finally:
            self._readiness.stopped()
            await self._abandon_inflight()
            await close_quietly(connection)

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
            requeue=exchanges.requeue,
            source=self._settings.event_source,
            published=self._metrics.events_published.labels(WORKFLOW_CANCELLED),
            tracing=self._tracing,
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
        settings = self._settings
        self._readiness.pause("dialnexa rejected the API key")
        self._metrics.credentials_valid.set(0)
        rejected_again = (
            self._resumed_at is not None
            and time.monotonic() - self._resumed_at < 10 * settings.auth_probe_max_s
        )
        wait_s = settings.auth_probe_initial_s
        if rejected_again:
            wait_s = min(self._probe_wait_s * 2, settings.auth_probe_max_s)
        self._probe_wait_s = wait_s
        log.error("consumer.paused", reason="credentials_rejected", first_probe_in_s=round(wait_s, 2))
        await self._drain()  # in-flight messages hit the same 401/403 and are handed on
        probe = asyncio.ensure_future(self._probe_until_accepted(wait_s))
        try:
            woke = await first(stop, lost, probe)
        finally:
            probe.cancel()
        if woke is not probe:
            return False
        self._credentials_rejected.clear()
        self._resumed_at = time.monotonic()
        self._metrics.credentials_valid.set(1)
        self._readiness.resume()
        log.info("consumer.resumed", reason="credentials_accepted")
        return True

    async def _probe_until_accepted(self, first_wait_s: float) -> None:
        """Probe the cancel permission with backoff, from `first_wait_s`, until it is granted."""
        settings = self._settings
        await asyncio.sleep(first_wait_s)
        async for attempt in stamina.retry_context(
            on=DialNexaError,
            attempts=None,  # paused until the key works; stop or broker loss end the wait
            timeout=None,
            wait_initial=max(first_wait_s, settings.auth_probe_initial_s),
            wait_max=settings.auth_probe_max_s,
            wait_jitter=settings.auth_probe_initial_s,
        ):
            with attempt:
                try:
                    await self._api.probe(settings.auth_probe_workflow_id)
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

    async def _on_message(
        self, message: AbstractIncomingMessage, *, publisher: Publisher, queue: str
    ) -> None:
        """Runs in the task aio-pika starts per delivery; tracked so a drain can wait for it."""
        task = asyncio.current_task()
        assert task is not None  # noqa: S101  # always inside a task here
        self._inflight.add(task)
        try:
            with self._tracing.consuming(
                body=message.body,
                headers=message.headers,
                exchange=message.exchange or "",
                routing_key=message.routing_key or "",
                queue=queue,
                message_id=message.message_id,
                delivery_tag=message.delivery_tag,
            ) as span:
                outcome = await self._intake.process(message, publisher, queue)
                if span is not None:
                    traced(span, outcome)
        finally:
            self._inflight.discard(task)
        if isinstance(outcome, CredentialsRejected):
            self._credentials_rejected.set()
        elif isinstance(outcome, Abandon):
            self._lost.set()  # a message could not be settled: new session, the broker redelivers
