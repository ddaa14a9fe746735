"""Tracing: OpenTelemetry spans at the service's edges, and the W3C trace context events carry.

Off unless configured. `Tracing.from_env` reads the standard `OTEL_*` variables: with no exporter
configured (`OTEL_TRACES_EXPORTER` unset or `none`, and no OTLP endpoint) there is no SDK tracer
provider at all and every edge skips its span (`Tracing.on` is false), so the cost is a few
attribute reads per event. The provider is built once by the command (`service.__main__`, the
ingress's command) and passed down; nothing is created at import time, so tests can hand in their
own provider (an in-memory exporter) without touching the global one.

The trace context of an event (docs/contract.md, "Tracing"):

- the **starting context** is the event's own: its CloudEvents distributed-tracing attributes
  (`traceparent`, `tracestate` in the structured body), else the AMQP headers of the same names
  (what a producer that traces writes, the ingress included). A malformed value is ignored: the
  event is processed as one without a trace context, never refused for it.
- every `workflow-cancelled` event carries the starting context as its own `traceparent` and
  `tracestate` attributes (the extension's rule: the context of the event that started it, not of
  each hop), and in its AMQP headers the context of the publish that sent it;
- every copy of an input message (retry, continuation, dead letter) carries the starting context
  in its AMQP headers, so the next delivery joins the same trace.

The context is passed on even while tracing is off here: outputs and copies carry what came in.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import Iterator, Mapping
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

import orjson
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.trace import Link, Span, SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from structlog.typing import EventDict, WrappedLogger

TRACEPARENT = "traceparent"
TRACESTATE = "tracestate"
_MAX_HEADER = 512  # W3C: a traceparent is 55 characters; a tracestate at most 32 members
_PROPAGATOR = TraceContextTextMapPropagator()
_IN_BODY = b'"traceparent"'
# The starting context of the delivery being handled (None: none came in and none is recorded).
_START: ContextVar[Carried | None] = ContextVar("canceller_trace_start", default=None)

EXPORTERS = ("otlp", "console", "none")


class TracingConfigError(ValueError):
    """An `OTEL_*` setting this service cannot follow; the text names the variable."""


@dataclass(frozen=True, slots=True)
class Carried:
    """A valid W3C trace context as it is written on (version 00) and as a parent `Context`."""

    traceparent: str
    tracestate: str | None
    context: Context

    @property
    def span_context(self) -> trace.SpanContext:
        return trace.get_current_span(self.context).get_span_context()

    def headers(self) -> dict[str, str]:
        if self.tracestate:
            return {TRACEPARENT: self.traceparent, TRACESTATE: self.tracestate}
        return {TRACEPARENT: self.traceparent}


def read(traceparent: object, tracestate: object = None) -> Carried | None:
    """The trace context of these two values, or None when there is none or it is malformed."""
    if isinstance(traceparent, bytes | bytearray):
        traceparent = bytes(traceparent).decode("utf-8", "replace")
    if not isinstance(traceparent, str) or len(traceparent) > _MAX_HEADER:
        return None
    carrier = {TRACEPARENT: traceparent}
    if isinstance(tracestate, str) and len(tracestate) <= _MAX_HEADER:
        carrier[TRACESTATE] = tracestate
    context = _PROPAGATOR.extract(carrier)
    span_context = trace.get_current_span(context).get_span_context()
    if not span_context.is_valid:
        return None
    return _carried(span_context, context)


def _carried(span_context: trace.SpanContext, context: Context | None = None) -> Carried:
    parent = f"00-{span_context.trace_id:032x}-{span_context.span_id:016x}-{span_context.trace_flags:02x}"
    state = span_context.trace_state.to_header() or None
    if context is None:
        context = trace.set_span_in_context(trace.NonRecordingSpan(span_context))
    return Carried(parent, state, context)


def of_message(body: bytes, headers: Mapping[str, Any] | None) -> tuple[Carried | None, Carried | None]:
    """(starting context, producer's context) of one delivery: the event's own attributes first,
    else its AMQP headers; the producer's context is the headers'."""
    producer = read(headers.get(TRACEPARENT), headers.get(TRACESTATE)) if headers else None
    if _IN_BODY in body:  # only then is the body read a second time
        try:
            envelope = orjson.loads(body)
        except orjson.JSONDecodeError:
            envelope = None
        if isinstance(envelope, dict):
            own = read(envelope.get(TRACEPARENT), envelope.get(TRACESTATE))
            if own is not None:
                return own, producer
    return producer, producer


def started() -> Carried | None:
    """The starting context of the delivery being handled in this task, if any."""
    return _START.get()


@contextlib.contextmanager
def _starting(start: Carried | None) -> Iterator[None]:
    """`start` is the starting context of what this task handles, for the block."""
    token = _START.set(start)
    try:
        yield
    finally:
        _START.reset(token)


def note(name: str, attributes: Mapping[str, str | int | float]) -> None:
    """A span event on the current span, when it is recorded (nothing otherwise)."""
    span = trace.get_current_span()
    if span.is_recording():
        span.add_event(name, attributes)


def note_wait(lane: str, since: float, workflow_id: str) -> None:
    """`pacer.wait`: how long a call waited for its lane's slot and the pacer (`since`: perf_counter)."""
    span = trace.get_current_span()
    if span.is_recording():
        waited = time.perf_counter() - since
        span.add_event(
            "pacer.wait",
            {
                "canceller.lane": lane,
                "canceller.wait_s": round(waited, 6),
                "dialnexa.workflow.id": workflow_id,
            },
        )


def add_trace_ids(_logger: WrappedLogger, _name: str, event_dict: EventDict) -> EventDict:
    """structlog: `trace_id` and `span_id` on every line written while a valid span is current."""
    span_context = trace.get_current_span().get_span_context()
    if span_context.is_valid:
        event_dict["trace_id"] = format(span_context.trace_id, "032x")
        event_dict["span_id"] = format(span_context.span_id, "016x")
    return event_dict


# --- the spans ---------------------------------------------------------------------------------

MESSAGING = {"messaging.system": "rabbitmq"}


class Tracing:
    """The service's tracer, or none: every edge asks `on` before it builds a span."""

    def __init__(self, provider: trace.TracerProvider | None = None) -> None:
        self.provider = provider
        self.on = provider is not None
        self.tracer: trace.Tracer = (
            provider.get_tracer("workflow_canceller") if provider is not None else trace.NoOpTracer()
        )

    @classmethod
    def from_env(cls, service_name: str, environ: Mapping[str, str] | None = None) -> Tracing:
        """The tracing the `OTEL_*` variables describe; off (no provider) unless an exporter is."""
        env = os.environ if environ is None else environ
        exporter = _exporter_name(env)
        if exporter == "none":
            return cls()
        return cls(_sdk_provider(exporter, service_name, env))

    async def aclose(self) -> None:
        """Export what is left and stop (in a thread: an exporter's last flush may block)."""
        shutdown = getattr(self.provider, "shutdown", None)
        if shutdown is not None:
            await asyncio.to_thread(shutdown)

    @contextlib.contextmanager
    def consuming(
        self,
        *,
        body: bytes,
        headers: Mapping[str, Any] | None,
        exchange: str,
        routing_key: str,
        queue: str,
        message_id: str | None,
        delivery_tag: int | None,
    ) -> Iterator[Span | None]:
        """One delivery being processed: the starting context set for the task, and (when on) a
        `process` span, child of the starting context and linked to the producer's."""
        start, producer = of_message(body, headers)
        if not self.on:
            with _starting(start):
                yield None
            return
        attributes: dict[str, str | int] = {
            **MESSAGING,
            "messaging.operation.name": "process",
            "messaging.operation.type": "process",
            "messaging.destination.name": exchange,
            "messaging.destination.subscription.name": queue,
        }
        if routing_key:
            attributes["messaging.rabbitmq.destination.routing_key"] = routing_key
        if message_id:
            attributes["messaging.message.id"] = message_id
        if delivery_tag is not None:
            attributes["messaging.rabbitmq.message.delivery_tag"] = delivery_tag
        links = []
        if producer is not None and (start is None or producer.span_context != start.span_context):
            links.append(Link(producer.span_context))
        parent = start.context if start is not None else Context()  # no context: a new trace
        with (
            self.tracer.start_as_current_span(
                f"process {queue}", context=parent, kind=SpanKind.CONSUMER, attributes=attributes, links=links
            ) as span,
            _starting(start or _carried(span.get_span_context())),
        ):
            yield span

    @contextlib.contextmanager
    def serving(self, method: str, route: str, headers: Mapping[str, str]) -> Iterator[Span | None]:
        """One HTTP request served: the caller's context (its `traceparent` header, or a binary-mode
        event's `ce-traceparent`) set for the task, and (when on) a server span, its child."""
        incoming = read(headers.get(TRACEPARENT), headers.get(TRACESTATE)) or read(
            headers.get("ce-traceparent"), headers.get("ce-tracestate")
        )
        if not self.on:
            with _starting(incoming):
                yield None
            return
        attributes = {"http.request.method": method, "http.route": route, "url.path": route}
        with (
            self.tracer.start_as_current_span(
                f"{method} {route}",
                context=incoming.context if incoming is not None else Context(),
                kind=SpanKind.SERVER,
                attributes=attributes,
            ) as span,
            _starting(incoming),
        ):
            yield span

    @contextlib.contextmanager
    def producing(
        self, exchange: str, routing_key: str, message_id: str | None, headers: dict[str, Any]
    ) -> Iterator[None]:
        """One confirmed publish: when on, a `publish` span whose context is written into `headers`;
        when off, the starting context of the delivery (or request) being handled, passed on as is."""
        if not self.on:
            start = started()
            if start is not None:
                headers.update(start.headers())
            yield
            return
        attributes: dict[str, str] = {
            **MESSAGING,
            "messaging.operation.name": "publish",
            "messaging.operation.type": "send",
            "messaging.destination.name": exchange,
        }
        if routing_key:
            attributes["messaging.rabbitmq.destination.routing_key"] = routing_key
        if message_id:
            attributes["messaging.message.id"] = message_id
        name = f"publish {exchange}" if exchange else "publish"
        with self.tracer.start_as_current_span(
            name, kind=SpanKind.PRODUCER, attributes=attributes, record_exception=False
        ) as span:
            context = span.get_span_context()
            if context.is_valid:
                headers.update(_carried(context).headers())
            try:
                yield
            except Exception as error:
                span.set_attribute("error.type", type(error).__name__)
                span.set_status(Status(StatusCode.ERROR, str(error)[:200]))
                raise


def _exporter_name(env: Mapping[str, str]) -> str:
    """Which exporter: `OTEL_TRACES_EXPORTER`, else `otlp` when an OTLP endpoint is set, else none."""
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return "none"
    names = [n.strip().lower() for n in env.get("OTEL_TRACES_EXPORTER", "").split(",") if n.strip()]
    if not names:
        endpoint = env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or env.get("OTEL_EXPORTER_OTLP_ENDPOINT")
        return "otlp" if endpoint else "none"
    if len(names) > 1 or names[0] not in EXPORTERS:
        raise TracingConfigError(
            f"OTEL_TRACES_EXPORTER: {env['OTEL_TRACES_EXPORTER'][:40]!r} is not one of {', '.join(EXPORTERS)}"
        )
    return names[0]


def _sdk_provider(exporter: str, service_name: str, env: Mapping[str, str]) -> trace.TracerProvider:
    """An SDK provider with a batching processor; the SDK reads the sampler, resource, batch and
    OTLP settings (endpoint, headers, timeout, compression, certificates) from the environment."""
    from opentelemetry.sdk.resources import SERVICE_NAME, Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SpanExporter

    protocol = env.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL") or env.get("OTEL_EXPORTER_OTLP_PROTOCOL")
    if exporter == "otlp" and protocol not in (None, "", "http/protobuf"):
        raise TracingConfigError(
            f"OTEL_EXPORTER_OTLP_PROTOCOL: {protocol[:20]!r}: only http/protobuf is built in"
        )
    resource = Resource.create()
    if str(resource.attributes.get(SERVICE_NAME, "")).startswith("unknown_service"):
        resource = resource.merge(Resource({SERVICE_NAME: service_name}))
    provider = TracerProvider(resource=resource)  # the sampler: OTEL_TRACES_SAMPLER and _ARG
    span_exporter: SpanExporter
    if exporter == "console":
        span_exporter = ConsoleSpanExporter(service_name=service_name)
    else:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        span_exporter = OTLPSpanExporter()
    provider.add_span_processor(BatchSpanProcessor(span_exporter))
    return provider
