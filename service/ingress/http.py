"""The HTTP side: `POST /v1/events` and the probes; every refusal is an RFC 9457 problem."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from contextlib import AsyncExitStack

import orjson
import structlog
from aiohttp import web
from cachetools import TTLCache
from opentelemetry.trace import Status, StatusCode
from prometheus_client import CollectorRegistry

from ..config import IngressSettings
from ..core.events import InboundEvent, InvalidEvent, parse
from ..observe import probes
from ..observe.tracing import Tracing
from . import cloudevents, signing
from .link import BrokerLink, Unavailable
from .metrics import IngressMetrics

log = structlog.get_logger("workflow_canceller.ingress")


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
        verifier: signing.Verifier,
        link: BrokerLink,
        metrics: IngressMetrics,
        clock: Callable[[], float] = time.time,
        tracing: Tracing | None = None,
    ) -> None:
        self._settings = settings
        self._tracing = tracing or Tracing()
        self._verifier = verifier
        self._link = link
        self._metrics = metrics
        self._clock = clock
        # An exact replay verifies until its timestamp is 5 minutes old, and it may have arrived 5
        # minutes early: remembering each id for twice the tolerance covers the whole window.
        size = settings.webhook_replay_cache_size
        self._accepted: TTLCache[str, str] | None = (
            TTLCache(maxsize=size, ttl=2 * signing.TOLERANCE_S) if size else None
        )

    async def events(self, request: web.Request) -> web.Response:
        with self._tracing.serving(request.method, "/v1/events", request.headers) as span:
            try:
                response = await self._accept(request)
            except Problem as problem:
                response = self._refuse(request, problem)
            self._metrics.requests.labels(str(response.status)).inc()
            if span is not None:
                span.set_attribute("http.response.status_code", response.status)
                if response.status >= 500:  # a server span's 4xx is the client's error, not ours
                    span.set_attribute("error.type", str(response.status))
                    span.set_status(Status(StatusCode.ERROR))
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
        except signing.SignatureError as error:
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


def _mode(request: web.Request) -> cloudevents.Mode:
    """Structured or binary mode; 415 for any other content type (before the body is read)."""
    try:
        return cloudevents.mode_of(request.headers.get("Content-Type"), request.headers)
    except cloudevents.UnsupportedMediaType as error:
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


def _event(
    mode: cloudevents.Mode, body: bytes, request: web.Request, limit: int
) -> tuple[bytes, InboundEvent]:
    """The structured form and the validated event (the worker's own `events.parse`); 400 or 413."""
    try:
        structured = cloudevents.structured_body(mode, body, request.headers.items())
        if len(structured) > limit:
            detail = f"the event is {len(structured)} bytes in structured form, over the {limit}-byte limit"
            raise Problem(413, "too_large", detail)
        return structured, parse(structured, cloudevents.STRUCTURED, limit)
    except InvalidEvent as error:
        raise Problem(400, "invalid_event", str(error)) from None


def build_app(ingress: Ingress, link: BrokerLink, registry: CollectorRegistry) -> web.Application:
    """The ingress's one HTTP server: the events endpoint beside the shared probes and metrics."""

    def readiness() -> tuple[bool, dict[str, object]]:
        return link.ready, {"ready": link.ready}

    app = probes.build_app(readiness, registry)
    app.router.add_post("/v1/events", ingress.events)
    return app


async def serve(
    settings: IngressSettings,
    registry: CollectorRegistry,
    stop: asyncio.Event,
    tracing: Tracing | None = None,
) -> None:
    """Run the ingress until `stop` is set: HTTP closes first (in-flight requests finish), then the broker.
    `tracing` is built by the command from the `OTEL_*` variables (off when not given)."""
    tracing = tracing or Tracing()
    metrics = IngressMetrics.build(registry)
    link = BrokerLink(settings, metrics, tracing)
    ingress = Ingress(settings, signing.Verifier(settings.webhook_secrets), link, metrics, tracing=tracing)
    link_stop = asyncio.Event()
    async with AsyncExitStack() as stack:
        stack.push_async_callback(tracing.aclose)  # closed last: the final spans are exported
        link_task = asyncio.create_task(link.run(link_stop))
        stack.push_async_callback(_stop_link, link_stop, link_task)
        runner = await probes.start_server(
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
