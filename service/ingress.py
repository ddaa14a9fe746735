"""The webhook ingress: `workflow-canceller ingress` (and `sign`).

CRMs that speak HTTP rather than AMQP POST CloudEvents to `/v1/events`, signed the Standard
Webhooks way. A request is answered 202 only once the broker has confirmed the event on the input
exchange, published exactly as an AMQP producer would (structured JSON, persistent, `mandatory`,
routing key = event type), so the worker reads it unchanged. Everything else gets a status the
sender can act on: 400/401/413/415 are final, 503 (with `Retry-After`) means "send it again".

    request --415 content type--> --413 size--> --401 signature--> replay? 202 --400 event-->
        --503 broker not connected / unroutable / not confirmed--> 202 accepted

One long-lived connection and channel (publisher confirms), reconnected in the background with
capped, jittered backoff; `/readyz` is 503 while it is down. A `webhook-id` accepted within the
signature tolerance is remembered (per process) and a replay is answered 202 without publishing.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import random
import time
from collections.abc import Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated, Any

import aio_pika
import aiormq
import orjson
import structlog
from aio_pika.abc import AbstractConnection, AbstractExchange
from aiohttp import web
from cachetools import TTLCache
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from pydantic import Field, SecretStr, field_validator
from pydantic_settings import NoDecode

from . import broker, webhooks
from .events import InboundEvent, InvalidEvent, parse
from .health import start_server

log = structlog.get_logger("workflow_canceller.ingress")

WEBHOOK_ID_HEADER = "canceller-webhook-id"
_PUBLISH_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
_BROKER_ERRORS = (
    aiormq.exceptions.AMQPError,
    aio_pika.exceptions.AMQPException,
    aiormq.exceptions.ChannelInvalidStateError,  # a RuntimeError: publishing on a closed channel
    OSError,
    TimeoutError,
)


# ------------------------------------------------------------------------------------------------
# settings


class IngressSettings(webhooks.WebhookSettings):
    """Everything `ingress` reads: the common settings, the secrets (required) and its HTTP side."""

    # Several at once while a secret is rotated: a request signed with any of them is accepted.
    webhook_secrets: Annotated[tuple[SecretStr, ...], NoDecode]
    ingress_port: int = Field(default=8081, ge=1, le=65_535)
    ingress_host: str = "0.0.0.0"  # noqa: S104  # CRMs, the probes and Prometheus reach the pod from outside
    # Told to senders with every 503.
    ingress_retry_after_s: int = Field(default=5, ge=1, le=3_600)
    # webhook-ids remembered for replay detection (per process, for twice the signature tolerance).
    webhook_replay_cache_size: int = Field(default=100_000, ge=0, le=10_000_000)

    @field_validator("webhook_secrets")
    @classmethod
    def _need_one(cls, value: tuple[SecretStr, ...]) -> tuple[SecretStr, ...]:
        """An ingress without a secret could verify nothing."""
        if not value:
            raise ValueError("at least one whsec_ secret is required")
        return value


# ------------------------------------------------------------------------------------------------
# metrics


@dataclass(frozen=True, slots=True)
class IngressMetrics:
    """The ingress's metrics (`canceller_ingress_*`), built from a registry that is passed in."""

    requests: Counter
    signature_failures: Counter
    replays: Counter
    published: Counter
    publish_duration: Histogram
    ready: Gauge
    broker_reconnects: Counter

    @classmethod
    def build(cls, registry: CollectorRegistry) -> IngressMetrics:
        """Create and register every ingress metric in *registry*."""
        metrics = cls(
            requests=Counter(
                "canceller_ingress_requests_total",
                "POST /v1/events requests answered, by HTTP status code.",
                ["status_code"],
                registry=registry,
            ),
            signature_failures=Counter(
                "canceller_ingress_signature_failures_total",
                "Requests refused with 401, by why the signature did not verify.",
                ["reason"],
                registry=registry,
            ),
            replays=Counter(
                "canceller_ingress_replays_total",
                "Requests whose webhook-id was already accepted: answered 202, not published again.",
                registry=registry,
            ),
            published=Counter(
                "canceller_ingress_events_published_total",
                "Events the broker confirmed on the input exchange, by event type.",
                ["event_type"],
                registry=registry,
            ),
            publish_duration=Histogram(
                "canceller_ingress_publish_duration_seconds",
                "Time from publishing an event to the broker's answer, by result.",
                ["result"],
                buckets=_PUBLISH_BUCKETS_S,
                registry=registry,
            ),
            ready=Gauge(
                "canceller_ingress_ready",
                "1 while connected to the broker with a confirming channel, else 0.",
                registry=registry,
            ),
            broker_reconnects=Counter(
                "canceller_ingress_broker_reconnects_total",
                "Broker connections lost or refused, each followed by a reconnect attempt.",
                registry=registry,
            ),
        )
        for reason in webhooks.SIGNATURE_FAILURES:
            metrics.signature_failures.labels(reason)
        return metrics


# ------------------------------------------------------------------------------------------------
# the broker side


class Unavailable(Exception):
    """The event was not confirmed by the broker; the sender should retry. `reason` is bounded."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


class BrokerLink:
    """One connection and one confirming channel to the input exchange, kept up in the background."""

    def __init__(self, settings: IngressSettings, metrics: IngressMetrics) -> None:
        self._settings = settings
        self._metrics = metrics
        self._exchange: AbstractExchange | None = None
        self._lost = asyncio.Event()
        self._was_up = False
        metrics.ready.set(0)

    @property
    def ready(self) -> bool:
        return self._exchange is not None

    async def run(self, stop: asyncio.Event) -> None:
        """Stay connected until `stop` is set, reconnecting with capped, jittered backoff."""
        backoff_s = self._settings.reconnect_initial_s
        while not stop.is_set():
            try:
                await self._session(stop)
            except _BROKER_ERRORS as error:
                if self._was_up:  # a working connection was lost: start the backoff afresh
                    backoff_s, self._was_up = self._settings.reconnect_initial_s, False
                self._metrics.broker_reconnects.inc()
                log.warning("broker.unavailable", error=_short(error), retry_in_s=round(backoff_s, 2))
                await _wait(stop, backoff_s * random.uniform(0.8, 1.2))  # noqa: S311  # jitter, not crypto
                backoff_s = min(backoff_s * 2, self._settings.reconnect_max_s)

    async def _session(self, stop: asyncio.Event) -> None:
        connection = await broker.connect(self._settings, "ingress")
        self._lost = lost = asyncio.Event()
        try:
            connection.close_callbacks.add(lambda *_: lost.set())
            channel = await connection.channel(publisher_confirms=True, on_return_raises=True)
            channel.close_callbacks.add(lambda *_: lost.set())
            exchange = await channel.declare_exchange(
                self._settings.input_exchange, aio_pika.ExchangeType.TOPIC, durable=True
            )
            self._up(exchange)
            await _first(stop, lost)
            if not stop.is_set():
                raise ConnectionError("connection or channel closed")
        finally:
            self._down()
            await _close_quietly(connection)

    def _up(self, exchange: AbstractExchange) -> None:
        self._exchange = exchange
        self._was_up = True
        self._metrics.ready.set(1)
        log.info("broker.connected", exchange=exchange.name)

    def _down(self) -> None:
        self._exchange = None
        self._metrics.ready.set(0)

    async def publish(self, body: bytes, event: InboundEvent, webhook_id: str) -> None:
        """Publish one event and wait for the broker's confirm; `Unavailable` if it is not confirmed."""
        exchange = self._exchange
        if exchange is None:
            raise Unavailable("not_connected", "not connected to the broker")
        message = aio_pika.Message(
            body,
            content_type=webhooks.STRUCTURED,
            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
            message_id=event.id,
            type=event.type,
            timestamp=datetime.now(UTC),
            headers={WEBHOOK_ID_HEADER: webhook_id},
        )
        started = time.monotonic()
        result = "interrupted"  # until the broker answers (e.g. the process is stopping)
        try:
            await exchange.publish(
                message, event.type, mandatory=True, timeout=self._settings.publish_timeout_s
            )
            result = "confirmed"
        except _BROKER_ERRORS as error:
            failure = self._failure(error)
            result = failure.reason
            raise failure from error
        finally:
            self._metrics.publish_duration.labels(result).observe(time.monotonic() - started)
        self._metrics.published.labels(event.type).inc()

    def _failure(self, error: BaseException) -> Unavailable:
        """What a failed publish means for the sender; a broken channel also ends the session."""
        if isinstance(error, aiormq.exceptions.PublishError):
            return Unavailable("unroutable", "no queue is bound for this event type (is the worker up?)")
        if isinstance(error, aiormq.exceptions.DeliveryError):
            return Unavailable("refused", "the broker refused the event")
        if isinstance(error, TimeoutError):
            return Unavailable("unconfirmed", "the broker did not confirm the event in time")
        self._lost.set()
        return Unavailable("broker_error", "the broker connection failed while publishing")


async def _first(*events: asyncio.Event) -> None:
    """Return as soon as one of `events` is set."""
    waiters = [asyncio.ensure_future(event.wait()) for event in events]
    try:
        await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in waiters:
            waiter.cancel()


async def _wait(stop: asyncio.Event, seconds: float) -> None:
    """Sleep for `seconds` unless `stop` is set first."""
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), seconds)


async def _close_quietly(connection: AbstractConnection) -> None:
    with contextlib.suppress(*_BROKER_ERRORS):
        await connection.close()


def _short(error: BaseException) -> str:
    return f"{type(error).__name__}: {error}"[:200]


# ------------------------------------------------------------------------------------------------
# the HTTP side

_PROBLEMS = {
    400: ("invalid-event", "The event is not valid"),
    401: ("invalid-signature", "The webhook signature did not verify"),
    413: ("too-large", "The request body is over the size limit"),
    415: ("unsupported-media-type", "The content type is not accepted"),
    503: ("unavailable", "The event could not be handed to the broker; send it again later"),
}


class Problem(Exception):
    """A request refused: an RFC 9457 problem-details answer. `reason` is a bounded label for logs."""

    def __init__(self, status: int, reason: str, detail: str, retry_after_s: int | None = None) -> None:
        super().__init__(detail)
        self.status = status
        self.reason = reason
        self.detail = detail
        self.retry_after_s = retry_after_s

    def response(self) -> web.Response:
        slug, title = _PROBLEMS[self.status]
        body = {
            "type": f"urn:workflow-canceller:problem:{slug}",
            "title": title,
            "status": self.status,
            "detail": self.detail,
        }
        headers = {} if self.retry_after_s is None else {"Retry-After": str(self.retry_after_s)}
        return web.Response(
            body=orjson.dumps(body),
            status=self.status,
            content_type="application/problem+json",
            headers=headers,
        )


class Ingress:
    """`POST /v1/events`: check, verify, validate, publish, answer."""

    def __init__(
        self,
        settings: IngressSettings,
        verifier: webhooks.Verifier,
        link: BrokerLink,
        metrics: IngressMetrics,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._settings = settings
        self._verifier = verifier
        self._link = link
        self._metrics = metrics
        self._clock = clock
        # An exact replay verifies until its timestamp is 5 minutes old, and it may have arrived 5
        # minutes early: remembering each id for twice the tolerance covers the whole window.
        size = settings.webhook_replay_cache_size
        self._accepted: TTLCache[str, str] | None = (
            TTLCache(maxsize=size, ttl=2 * webhooks.TOLERANCE_S) if size else None
        )

    async def events(self, request: web.Request) -> web.Response:
        try:
            response = await self._accept(request)
        except Problem as problem:
            response = self._refuse(request, problem)
        self._metrics.requests.labels(str(response.status)).inc()
        return response

    async def _accept(self, request: web.Request) -> web.Response:
        mode = _mode(request)
        body = await _read_bounded(request, self._settings.max_body_bytes)
        webhook_id = self._verify(body, request)
        event_id = self._accepted.get(webhook_id) if self._accepted is not None else None
        if event_id is not None:
            return self._replay(webhook_id, event_id)
        structured, event = _event(mode, body, request, self._settings.max_body_bytes)
        try:
            await self._link.publish(structured, event, webhook_id)
        except Unavailable as error:
            raise Problem(503, error.reason, error.detail, self._settings.ingress_retry_after_s) from None
        if self._accepted is not None:
            self._accepted[webhook_id] = event.id
        log.info(
            "ingress.accepted",
            event_id=event.id,
            event_type=event.type,
            webhook_id=webhook_id,
            mode=mode,
        )
        return web.json_response({"status": "accepted", "event_id": event.id}, status=202)

    def _verify(self, body: bytes, request: web.Request) -> str:
        try:
            return self._verifier.verify(body, request.headers, self._clock())
        except webhooks.SignatureError as error:
            self._metrics.signature_failures.labels(error.reason).inc()
            raise Problem(401, error.reason, error.detail) from None

    def _replay(self, webhook_id: str, event_id: str) -> web.Response:
        self._metrics.replays.inc()
        log.info("ingress.replayed", webhook_id=webhook_id, event_id=event_id)
        return web.json_response({"status": "duplicate", "event_id": event_id}, status=202)

    def _refuse(self, request: web.Request, problem: Problem) -> web.Response:
        fields = {"status": problem.status, "reason": problem.reason, "detail": problem.detail}
        if problem.status == 503:
            log.warning("ingress.unavailable", **fields, remote=request.remote)
        else:
            log.info("ingress.rejected", **fields, remote=request.remote)
        return problem.response()


def _mode(request: web.Request) -> webhooks.Mode:
    """Structured or binary mode; 415 for any other content type (before the body is read)."""
    try:
        return webhooks.mode_of(request.headers.get("Content-Type"), request.headers)
    except webhooks.UnsupportedMediaType as error:
        raise Problem(415, "unsupported_media_type", str(error)) from None


async def _read_bounded(request: web.Request, limit: int) -> bytes:
    """The body, read in chunks and abandoned (413) as soon as it passes `limit` bytes."""
    declared = request.content_length
    if declared is not None and declared > limit:
        raise Problem(413, "too_large", f"the body is {declared} bytes, over the {limit}-byte limit")
    body = bytearray()
    async for chunk in request.content.iter_chunked(64 * 1024):
        body += chunk
        if len(body) > limit:
            raise Problem(413, "too_large", f"the body is over the {limit}-byte limit")
    return bytes(body)


def _event(mode: webhooks.Mode, body: bytes, request: web.Request, limit: int) -> tuple[bytes, InboundEvent]:
    """The structured form and the validated event (the worker's own `events.parse`); 400 or 413."""
    try:
        structured = webhooks.structured_body(mode, body, request.headers.items())
        if len(structured) > limit:
            detail = f"the event is {len(structured)} bytes in structured form, over the {limit}-byte limit"
            raise Problem(413, "too_large", detail)
        return structured, parse(structured, webhooks.STRUCTURED, limit)
    except InvalidEvent as error:
        raise Problem(400, "invalid_event", str(error)) from None


def build_app(ingress: Ingress, link: BrokerLink, registry: CollectorRegistry) -> web.Application:
    """The ingress's one HTTP server: the events endpoint, probes and metrics."""

    async def healthz(_request: web.Request) -> web.Response:
        return web.json_response({"status": "alive"})

    async def readyz(_request: web.Request) -> web.Response:
        return web.json_response({"ready": link.ready}, status=200 if link.ready else 503)

    async def metrics(_request: web.Request) -> web.Response:
        return web.Response(body=generate_latest(registry), headers={"Content-Type": CONTENT_TYPE_LATEST})

    app = web.Application()
    app.router.add_post("/v1/events", ingress.events)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics)
    return app


async def serve(settings: IngressSettings, registry: CollectorRegistry, stop: asyncio.Event) -> None:
    """Run the ingress until `stop` is set: HTTP closes first (in-flight requests finish), then the broker."""
    metrics = IngressMetrics.build(registry)
    link = BrokerLink(settings, metrics)
    ingress = Ingress(settings, webhooks.Verifier(settings.webhook_secrets), link, metrics)
    link_stop = asyncio.Event()
    async with AsyncExitStack() as stack:
        link_task = asyncio.create_task(link.run(link_stop))
        stack.push_async_callback(_stop_link, link_stop, link_task)
        runner = await start_server(
            build_app(ingress, link, registry), settings.ingress_host, settings.ingress_port
        )
        stack.push_async_callback(runner.cleanup)
        log.info(
            "service.started",
            role="ingress",
            ingress_port=settings.ingress_port,
            input_exchange=settings.input_exchange,
            secrets=len(settings.webhook_secrets),
        )
        await stop.wait()
    log.info("service.stopped", role="ingress")


async def _stop_link(stop: asyncio.Event, task: asyncio.Task[None]) -> None:
    stop.set()
    await task


# ------------------------------------------------------------------------------------------------
# commands

EXIT_OK = 0
EXIT_USAGE = 2


def commands(command: Any) -> dict[str, Any]:
    """The ingress subcommands, built with the dispatcher's `Command` type."""
    return {
        "ingress": command(
            "accept signed CloudEvents webhooks over HTTP and publish them to the input exchange",
            IngressSettings,
            _no_arguments,
            _run_ingress,
            serves=True,
        ),
        "sign": command(
            "print the Standard Webhooks headers (or a curl command) that sign a request body",
            webhooks.WebhookSettings,
            webhooks.sign_arguments,
            webhooks.run_sign,
        ),
    }


def _no_arguments(parser: argparse.ArgumentParser) -> None:
    """A command without options."""


def _run_ingress(_args: argparse.Namespace, settings: IngressSettings) -> int:
    """Serve until SIGTERM or SIGINT."""
    from . import app

    async def main() -> None:
        stop = asyncio.Event()
        app.install_signal_handlers(stop)
        await serve(settings, REGISTRY, stop)

    loop_factory = None
    if settings.event_loop == "uvloop":
        import uvloop

        loop_factory = uvloop.new_event_loop
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        runner.run(main())
    return EXIT_OK
