"""The worker's composition root: builds every object once, runs until `stop`, then closes in
reverse order of creation: broker (after the bounded drain), the HTTP endpoints, the DialNexa
session. Nothing else in the package imports it.
"""

from __future__ import annotations

import asyncio
import gc
from contextlib import AsyncExitStack

import stamina.instrumentation
import structlog
from prometheus_client import CollectorRegistry

from .broker.worker import Worker
from .config import Settings
from .dialnexa.client import DialNexaClient
from .dialnexa.gateway import Gateway, TerminalCache
from .dialnexa.http import AiohttpSession
from .observe.metrics import Metrics
from .observe.probes import Readiness, build_app, start_server
from .observe.tracing import Tracing, note
from .ratelimit.admission import PacedAdmission, Slots
from .ratelimit.pacer import Pacer

log = structlog.get_logger("workflow_canceller.app")


def retry_hook(metrics: Metrics) -> stamina.instrumentation.RetryHook:
    """Count and log every quick in-process retry of a DialNexa call, and note it on the current
    span (the delivery's `process` span) when one records."""

    def on_retry(details: stamina.instrumentation.RetryDetails) -> None:
        reason = type(details.caused_by).__name__
        metrics.dialnexa_retries.labels(reason).inc()
        workflow_id = getattr(details.caused_by, "workflow_id", None)
        log.info(
            "dialnexa.retry_scheduled",
            retry_num=details.retry_num,
            wait_s=round(details.wait_for, 3),
            error=str(details.caused_by)[:200],
            workflow_id=workflow_id,
        )
        note(
            "dialnexa.retry",
            {
                "dialnexa.retry.number": details.retry_num,
                "dialnexa.retry.wait_s": round(details.wait_for, 3),
                "error.type": reason,
                "dialnexa.workflow.id": workflow_id or "",
            },
        )

    return on_retry


def build_gateway(
    settings: Settings, http: AiohttpSession, metrics: Metrics, tracing: Tracing | None = None
) -> Gateway:
    """The DialNexa client with its pacer, in-flight slots, admission and terminal cache."""
    pacer = Pacer(
        reserve_share=settings.complaint_reserved_budget,
        max_rps=settings.dialnexa_max_rps,
        reorder_slack=settings.concurrency,
    )
    client = DialNexaClient(
        http,
        metrics,
        max_wait_s=settings.max_rate_limit_wait_s,
        tracing=tracing,
        base_url=str(settings.dialnexa_base_url),
    )
    # Campaign workflows admitted at once: what the pace finishes while a call may still start.
    # Until the API tells the pace, two rounds of the in-flight slots.
    admission = PacedAdmission(pacer, settings.start_window_s, unpaced=2 * settings.concurrency)
    metrics.admitted_workflows.set_function(lambda: admission.in_flight)
    metrics.rate_limit_pause.set_function(pacer.blocked_for)
    return Gateway(
        client,
        pacer,
        Slots(settings.concurrency, settings.reserved_slots),
        TerminalCache(settings.terminal_cache_size, settings.terminal_cache_ttl_s),
        metrics,
        campaign_admission=admission,
    )


def http_session(settings: Settings, connections: int) -> AiohttpSession:
    """The DialNexa session the settings describe, with at most `connections` connections."""
    return AiohttpSession(
        str(settings.dialnexa_base_url),
        settings.dialnexa_api_key,
        connect_timeout_s=settings.http_connect_timeout_s,
        read_timeout_s=settings.http_read_timeout_s,
        max_connections=connections,
    )


# The youngest generation is collected every this many net allocations (CPython's default: 700).
GC_GEN0_THRESHOLD = 10_000


def settle_gc() -> None:
    """Collector settings for a long-running worker, applied once start-up is done.

    What start-up built (modules, models, the metric registry) lives as long as the process, so it
    is frozen out of every later collection, and the youngest generation is collected less often.
    Draining 4,000 events, the worker spent about 150 ms in the collector (two full collections of
    about 30 ms each among them) and about 30 ms with these settings (docs/performance.md).
    """
    gc.collect()
    gc.freeze()
    _, gen1, gen2 = gc.get_threshold()
    gc.set_threshold(GC_GEN0_THRESHOLD, gen1, gen2)


async def run(
    settings: Settings, registry: CollectorRegistry, stop: asyncio.Event, tracing: Tracing | None = None
) -> None:
    """Run the worker until `stop` is set; return once everything is closed. `tracing` is built by
    the command from the `OTEL_*` variables (off when not given)."""
    tracing = tracing or Tracing()
    metrics = Metrics.build(registry)
    metrics.credentials_valid.set(1)
    stamina.instrumentation.set_on_retry_hooks([retry_hook(metrics)])
    async with AsyncExitStack() as stack:
        stack.push_async_callback(tracing.aclose)  # closed last: the final spans are exported
        http = http_session(settings, settings.concurrency)
        stack.push_async_callback(http.aclose)
        gateway = build_gateway(settings, http, metrics, tracing)

        def rate_limited() -> str | None:
            """Not ready while DialNexa has told us to wait longer than a quick retry would."""
            wait_s = gateway.pacer.blocked_for()
            if wait_s > settings.max_retry_after_wait_s:
                return f"dialnexa rate limit: no calls for another {wait_s:.0f} s"
            return None

        readiness = Readiness(settings.input_queues, metrics, held_back=rate_limited)
        runner = await start_server(
            build_app(readiness.report, registry), settings.http_host, settings.http_port
        )
        stack.push_async_callback(runner.cleanup)
        worker = Worker(settings, gateway, metrics, readiness, tracing)
        if settings.http_transport != "aiohttp":
            log.warning("settings.ignored", setting="CANCELLER_HTTP_TRANSPORT", value=settings.http_transport)
        log.info(
            "service.started",
            http_port=settings.http_port,
            dialnexa_base_url=str(settings.dialnexa_base_url),
            concurrency=settings.concurrency,
            reserved_slots=settings.reserved_slots,
            event_loop=settings.event_loop,
            retry_delays_s=list(settings.retry_delays),
            tracing=tracing.on,
        )
        settle_gc()
        await worker.run(stop)
    log.info("service.stopped")
