"""Tracing: one trace from the CRM's request to DialNexa's answer, the starting context on every
output and copy, logs carrying the ids, and spans exported over OTLP to a local receiver.

Spans are read from an in-memory exporter on a provider of the test's own, passed to the worker
and the ingress (never the global provider), so tests do not share spans.
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from typing import Any

import aiohttp
import httpx
import pytest
import structlog
from aiohttp import web
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode
from prometheus_client import CollectorRegistry
from standardwebhooks import Webhook

from service import app, ingress
from service.cli import serve_until_signal
from service.config import CommonSettings
from service.dialnexa.client import DialNexaClient
from service.observe import logs, tracing
from service.observe.metrics import Metrics
from service.observe.tracing import Tracing, TracingConfigError
from service.simulator import Simulator
from testkit.processes import serving
from tests.support import BrokerProbe, MockSession, campaign, free_port, wait_until, wf_ids

pytestmark = pytest.mark.timeout(60)

SECRET = "whsec_" + base64.b64encode(b"tracing-test-secret-is-32-bytes!").decode()
TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
START = f"00-{TRACE_ID}-00f067aa0ba902b7-01"  # the CRM's event: the starting context
REQUEST = f"00-{TRACE_ID}-b7ad6b7169203331-01"  # the CRM's HTTP request, in the same trace
STATE = "crm=t61rcWkgMzE"


class Traced:
    """A provider of the test's own whose finished spans are kept in memory."""

    def __init__(self) -> None:
        self.exporter = InMemorySpanExporter()
        self.provider = TracerProvider()
        self.provider.add_span_processor(SimpleSpanProcessor(self.exporter))
        self.tracing = Tracing(self.provider)

    def spans(self) -> list[ReadableSpan]:
        return list(self.exporter.get_finished_spans())

    def named(self, name: str) -> list[ReadableSpan]:
        return [s for s in self.spans() if s.name == name]


@pytest.fixture
def traced() -> Iterator[Traced]:
    """An in-memory tracing set-up, shut down after the test."""
    found = Traced()
    yield found
    found.provider.shutdown()


class Running:
    """The worker (and optionally the ingress) in this process, with the given tracing."""

    def __init__(self) -> None:
        self.stops: list[tuple[asyncio.Event, asyncio.Task[None]]] = []

    async def worker(self, settings: Any, tracing: Tracing | None) -> CollectorRegistry:
        registry = CollectorRegistry()
        stop = asyncio.Event()
        self.stops.append((stop, asyncio.create_task(app.run(settings, registry, stop, tracing))))
        await wait_until(lambda: registry.get_sample_value("canceller_ready") == 1.0, what="worker ready")
        return registry

    async def ingress(self, settings: ingress.IngressSettings, tracing: Tracing) -> str:
        registry = CollectorRegistry()
        stop = asyncio.Event()
        self.stops.append((stop, asyncio.create_task(ingress.serve(settings, registry, stop, tracing))))
        await wait_until(lambda: registry.get_sample_value("canceller_ingress_ready") == 1.0, what="ingress")
        return f"http://127.0.0.1:{settings.ingress_port}"

    async def stop(self) -> None:
        for stop, task in reversed(self.stops):
            stop.set()
            await asyncio.wait_for(task, 30)


@pytest.fixture
async def running() -> AsyncIterator[Running]:
    """Start workers and ingresses; all are stopped afterwards."""
    found = Running()
    yield found
    await found.stop()


def signed(body: bytes) -> dict[str, str]:
    """Standard Webhooks headers for `body`."""
    webhook_id = f"msg_{uuid.uuid4().hex}"
    when = datetime.fromtimestamp(int(time.time()), UTC)
    return {
        "webhook-id": webhook_id,
        "webhook-timestamp": str(int(when.timestamp())),
        "webhook-signature": Webhook(SECRET).sign(webhook_id, when, body.decode()),
    }


def span_hex(span: ReadableSpan) -> tuple[str, str]:
    """(trace id, span id) of `span` in hex."""
    assert span.context is not None
    return format(span.context.trace_id, "032x"), format(span.context.span_id, "016x")


def parent_hex(span: ReadableSpan) -> str | None:
    """The parent's span id in hex, or None for a root span."""
    return None if span.parent is None else format(span.parent.span_id, "016x")


# ------------------------------------------------------------------------------------------------
# end to end


async def test_one_event_through_the_ingress_is_one_trace(
    traced: Traced,
    running: Running,
    make_settings: Any,
    simulator: tuple[Simulator, str],
    broker: BrokerProbe,
    amqp_url: str,
    names: dict[str, str],
) -> None:
    """The ingress request, its publish, the process span, every DialNexa call and output: one trace."""
    sim, _ = simulator
    ids = wf_ids(2)
    sim.script(ids[0], [503])  # one quick in-process retry
    await running.worker(make_settings(), traced.tracing)
    url = await running.ingress(
        ingress.IngressSettings(
            _env_file=None,  # type: ignore[call-arg]
            amqp_url=amqp_url,
            input_exchange=names["input_exchange"],
            webhook_secrets=(SECRET,),
            ingress_port=free_port(),
            ingress_host="127.0.0.1",
        ),
        traced.tracing,
    )
    event = {**campaign(ids), "traceparent": START, "tracestate": STATE}
    body = json.dumps(event).encode()
    headers = {"Content-Type": "application/cloudevents+json", "traceparent": REQUEST, **signed(body)}
    async with (
        aiohttp.ClientSession() as http,
        http.post(f"{url}/v1/events", data=body, headers=headers) as r,
    ):
        assert r.status == 202
    await wait_until(lambda: broker.output_ids() == set(ids), what="both outputs")
    process = f"process {names['campaign_queue']}"
    await wait_until(lambda: len(traced.named(process)) == 1, what="the process span")

    spans = traced.spans()
    assert {span_hex(s)[0] for s in spans} == {TRACE_ID}
    (server,) = traced.named("POST /v1/events")
    assert server.kind == SpanKind.SERVER and parent_hex(server) == REQUEST.split("-")[2]
    assert server.attributes is not None and server.attributes["http.response.status_code"] == 202
    (sent,) = traced.named(f"publish {names['input_exchange']}")
    assert sent.kind == SpanKind.PRODUCER and parent_hex(sent) == span_hex(server)[1]
    (consumed,) = traced.named(process)
    assert consumed.kind == SpanKind.CONSUMER and parent_hex(consumed) == START.split("-")[2]
    assert [format(link.context.span_id, "016x") for link in consumed.links] == [span_hex(sent)[1]]
    attributes = dict(consumed.attributes or {})
    assert attributes["messaging.system"] == "rabbitmq"
    assert attributes["messaging.operation.type"] == "process"
    assert attributes["messaging.destination.name"] == names["input_exchange"]
    assert attributes["messaging.rabbitmq.destination.routing_key"] == "campaign-ended"
    assert attributes["messaging.message.id"] == event["id"]
    assert attributes["canceller.outcome"] == "Completed"
    assert {"pacer.wait", "dialnexa.retry"} <= {e.name for e in consumed.events}

    calls = traced.named("POST /v1/workflows/{id}/cancel")
    by_workflow = {wf: [c for c in calls if (c.attributes or {})["dialnexa.workflow.id"] == wf] for wf in ids}
    assert [(c.attributes or {})["http.response.status_code"] for c in by_workflow[ids[0]]] == [503, 200]
    assert len(by_workflow[ids[1]]) == 1
    failed = by_workflow[ids[0]][0]
    assert failed.status.status_code == StatusCode.ERROR and (failed.attributes or {})["error.type"] == "503"
    assert all(c.kind == SpanKind.CLIENT and parent_hex(c) == span_hex(consumed)[1] for c in calls)
    assert all((c.attributes or {})["url.template"] == "/v1/workflows/{id}/cancel" for c in calls)

    outputs = traced.named(f"publish {names['output_exchange']}")
    assert len(outputs) == 2
    assert all(parent_hex(o) == span_hex(consumed)[1] for o in outputs)
    assert all((o.attributes or {})["messaging.operation.type"] == "send" for o in outputs)
    for output in broker.outputs:  # the starting context, not the hop's
        assert (output["traceparent"], output["tracestate"]) == (START, STATE)


async def test_a_message_without_trace_context_starts_a_new_trace(
    traced: Traced, running: Running, make_settings: Any, broker: BrokerProbe, names: dict[str, str]
) -> None:
    """No context anywhere: the process span is a new root, and the output carries its context."""
    await running.worker(make_settings(), traced.tracing)
    ids = wf_ids(1)
    await broker.publish(campaign(ids))
    await wait_until(lambda: broker.output_ids() == set(ids), what="the output")
    process = f"process {names['campaign_queue']}"
    await wait_until(lambda: len(traced.named(process)) == 1, what="the process span")
    (consumed,) = traced.named(process)
    assert consumed.parent is None and not consumed.links
    trace_id, span_id = span_hex(consumed)
    assert trace_id != TRACE_ID
    assert consumed.context is not None
    flags = f"{consumed.context.trace_flags:02x}"  # sampled, and (W3C level 2) a random trace id
    assert broker.outputs[0]["traceparent"] == f"00-{trace_id}-{span_id}-{flags}"


@pytest.mark.parametrize(
    ("in_body", "in_headers"),
    [
        ("00-not-a-trace-01", "garbage"),
        (42, f"00-{'0' * 32}-00f067aa0ba902b7-01"),  # not a string; an all-zero trace id
        (f"ff-{TRACE_ID}-00f067aa0ba902b7-01", None),  # version ff is forbidden
    ],
)
async def test_a_malformed_traceparent_is_ignored(
    traced: Traced,
    running: Running,
    make_settings: Any,
    broker: BrokerProbe,
    names: dict[str, str],
    in_body: object,
    in_headers: str | None,
) -> None:
    """A malformed context is never an error nor a dead letter: the event is handled, in a new trace."""
    registry = await running.worker(make_settings(), traced.tracing)
    ids = wf_ids(1)
    headers = {"traceparent": in_headers} if in_headers is not None else None
    await broker.publish({**campaign(ids), "traceparent": in_body}, headers=headers)
    await wait_until(lambda: broker.output_ids() == set(ids), what="the output")
    process = f"process {names['campaign_queue']}"
    await wait_until(lambda: len(traced.named(process)) == 1, what="the process span")
    (consumed,) = traced.named(process)
    assert consumed.parent is None and consumed.status.status_code != StatusCode.ERROR
    assert span_hex(consumed)[0] != TRACE_ID
    labels = {"event_type": "campaign-ended", "result": "acked"}
    assert registry.get_sample_value("canceller_events_processed_total", labels) == 1.0


async def test_retry_and_dead_letter_copies_carry_the_starting_context(
    traced: Traced,
    running: Running,
    make_settings: Any,
    simulator: tuple[Simulator, str],
    broker: BrokerProbe,
    names: dict[str, str],
) -> None:
    """A retry copy's delivery joins the starting trace; the DLQ copy's headers carry its context."""
    sim, _ = simulator
    flaky, rejected = wf_ids(2)
    sim.script(flaky, [503, 502])  # both quick attempts fail: a copy through a delay queue
    sim.script(rejected, [400])  # permanent: a copy to the DLQ
    await running.worker(make_settings(), traced.tracing)
    await broker.watch_dlq()
    headers = {"traceparent": START, "tracestate": STATE}  # in the AMQP headers only
    await broker.publish(campaign([flaky]), headers=headers)
    await broker.publish(campaign([rejected]), headers=headers)
    await wait_until(lambda: broker.output_ids() == {flaky}, timeout_s=15, what="the retried output")
    await wait_until(lambda: len(broker.dead) == 1, what="the dead letter")
    process = f"process {names['campaign_queue']}"
    await wait_until(lambda: len(traced.named(process)) == 3, what="three process spans")
    for consumed in traced.named(process):
        assert span_hex(consumed)[0] == TRACE_ID and parent_hex(consumed) == START.split("-")[2]
    dead = broker.dead[0].headers or {}
    assert (dead["traceparent"], dead["tracestate"]) == (START, STATE)
    assert broker.outputs[0]["traceparent"] == START
    outcomes = sorted((s.attributes or {})["canceller.outcome"] for s in traced.named(process))
    assert outcomes == ["Completed", "DeadLetter", "RetryLater"]
    (dead_span,) = [
        s for s in traced.named(process) if (s.attributes or {})["canceller.outcome"] == "DeadLetter"
    ]
    assert dead_span.status.status_code == StatusCode.ERROR
    copies = [s for s in traced.spans() if s.kind == SpanKind.PRODUCER]
    assert {s.name for s in copies} >= {"publish", f"publish {names['dead_letter_exchange']}"}


async def test_with_tracing_off_the_context_is_still_passed_on(
    running: Running, make_settings: Any, broker: BrokerProbe
) -> None:
    """No provider: no spans, and the output still carries the event's starting context."""
    await running.worker(make_settings(), None)
    ids = wf_ids(1)
    await broker.publish({**campaign(ids), "traceparent": START})
    await wait_until(lambda: broker.output_ids() == set(ids), what="the output")
    assert broker.outputs[0]["traceparent"] == START
    assert "tracestate" not in broker.outputs[0]


# ------------------------------------------------------------------------------------------------
# pieces


def test_log_lines_carry_the_current_span() -> None:
    """A line written inside a span has its trace_id and span_id; one written outside has neither."""
    stream = io.StringIO()
    logs.configure("INFO", "json", stream=stream)
    provider = TracerProvider()
    try:
        log = structlog.get_logger("tracing-test")
        log.info("outside")
        with provider.get_tracer("t").start_as_current_span("inside") as span:
            log.info("inside")
            context = span.get_span_context()
    finally:
        provider.shutdown()
        logs.configure("INFO", "json")
    outside, inside = (json.loads(line) for line in stream.getvalue().splitlines())
    assert "trace_id" not in outside and "span_id" not in outside
    assert inside["trace_id"] == format(context.trace_id, "032x")
    assert inside["span_id"] == format(context.span_id, "016x")


@pytest.mark.parametrize(
    "value",
    [None, 42, "", "garbage", f"00-{TRACE_ID}-{'0' * 16}-01", f"00-{TRACE_ID.upper()}-00f067aa0ba902b7-01x"],
)
def test_read_ignores_what_is_not_a_trace_context(value: object) -> None:
    """Missing, malformed or all-zero values read as no context."""
    assert tracing.read(value) is None


def test_read_writes_the_context_back_the_same() -> None:
    """A valid context is written on exactly as it came (version 00), tracestate included."""
    carried = tracing.read(START, STATE)
    assert carried is not None
    assert carried.headers() == {"traceparent": START, "tracestate": STATE}


@pytest.mark.parametrize(
    "env",
    [{}, {"OTEL_TRACES_EXPORTER": "none"}, {"OTEL_SDK_DISABLED": "true", "OTEL_TRACES_EXPORTER": "otlp"}],
)
def test_tracing_is_off_unless_an_exporter_is_configured(env: dict[str, str]) -> None:
    """No exporter configured: no SDK provider at all, the API's no-op tracer."""
    found = Tracing.from_env("workflow-canceller", env)
    assert not found.on and found.provider is None


@pytest.mark.parametrize(
    "env",
    [
        {"OTEL_TRACES_EXPORTER": "zipkin"},
        {"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"},
    ],
)
def test_an_exporter_the_service_cannot_use_is_a_configuration_error(env: dict[str, str]) -> None:
    """An exporter or protocol not built in is refused, naming the variable."""
    with pytest.raises(TracingConfigError, match="OTEL_"):
        Tracing.from_env("workflow-canceller", env)


def test_a_tracing_setting_the_service_cannot_use_stops_start_up_with_exit_code_2(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The serving commands refuse an unknown OTEL_TRACES_EXPORTER before they start, naming it."""
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "zipkin")
    served: list[Tracing] = []

    async def serve(_stop: asyncio.Event, tracing: Tracing) -> None:
        served.append(tracing)

    assert serve_until_signal(CommonSettings(_env_file=None), "workflow-canceller", serve) == 2
    assert served == []
    assert "OTEL_TRACES_EXPORTER" in capsys.readouterr().err


async def test_spans_arrive_at_an_otlp_receiver(monkeypatch: pytest.MonkeyPatch) -> None:
    """With OTEL_EXPORTER_OTLP_ENDPOINT set, a DialNexa call's span reaches a local OTLP/HTTP receiver."""
    received: list[ExportTraceServiceRequest] = []

    async def traces(request: web.Request) -> web.Response:
        message = ExportTraceServiceRequest()
        message.ParseFromString(await request.read())
        received.append(message)
        return web.Response(status=200, content_type="application/x-protobuf", body=b"")

    async with serving("POST", "/v1/traces", traces) as receiver_url:
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", receiver_url)
        monkeypatch.setenv("OTEL_SERVICE_NAME", "canceller-under-test")
        found = Tracing.from_env("workflow-canceller")
        assert found.on
        base = "https://api.example.test/v1"
        http = MockSession(lambda _request: httpx.Response(200, json={"status": "cancelled"}), base_url=base)
        client = DialNexaClient(http, Metrics.build(CollectorRegistry()), tracing=found, base_url=base)
        await client.cancel("wf_otlp_1")
        await found.aclose()  # exports what the batch holds
        await wait_until(lambda: bool(received), what="an OTLP export")
    (resource_spans,) = received[0].resource_spans
    resource = {a.key: a.value.string_value for a in resource_spans.resource.attributes}
    assert resource["service.name"] == "canceller-under-test"
    (span,) = [s for scope in resource_spans.scope_spans for s in scope.spans]
    assert span.name == "POST /v1/workflows/{id}/cancel"
    attributes = {a.key: a.value for a in span.attributes}
    assert attributes["dialnexa.workflow.id"].string_value == "wf_otlp_1"
    assert attributes["server.address"].string_value == "api.example.test"
    assert attributes["http.response.status_code"].int_value == 200
