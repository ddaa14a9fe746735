"""Composition root and lifecycle.

Builds every object once, runs the worker until a signal, then closes in reverse order of
creation: broker (after the bounded drain), the HTTP endpoints, the DialNexa client.
"""

from __future__ import annotations

import asyncio
import signal
from contextlib import AsyncExitStack

import stamina.instrumentation
import structlog
from prometheus_client import CollectorRegistry

from .config import Settings
from .consumer import Worker
from .dialnexa import DialNexaClient, build_http_client
from .health import Readiness, build_app, start_server
from .metrics import Metrics

log = structlog.get_logger("workflow_canceller.app")


def retry_hook(metrics: Metrics) -> stamina.instrumentation.RetryHook:
    """Count and log every quick in-process retry of a DialNexa call."""

    def on_retry(details: stamina.instrumentation.RetryDetails) -> None:
        reason = type(details.caused_by).__name__
        metrics.dialnexa_retries.labels(reason).inc()
        log.info(
            "dialnexa.retry_scheduled",
            retry_num=details.retry_num,
            wait_s=round(details.wait_for, 3),
            error=str(details.caused_by)[:200],
        )

    return on_retry


def install_signal_handlers(stop: asyncio.Event) -> None:
    """SIGTERM and SIGINT set `stop`: intake ends, in-flight work drains, the process exits 0."""
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, _on_signal, stop, signum)


def _on_signal(stop: asyncio.Event, signum: int) -> None:
    log.info("service.stopping", signal=signal.Signals(signum).name)
    stop.set()


async def run(settings: Settings, registry: CollectorRegistry, stop: asyncio.Event) -> None:
    """Run the worker until `stop` is set; return once everything is closed."""
    metrics = Metrics.build(registry)
    metrics.credentials_valid.set(1)
    stamina.instrumentation.set_on_retry_hooks([retry_hook(metrics)])
    readiness = Readiness(settings.input_queues, metrics)
    async with AsyncExitStack() as stack:
        http = build_http_client(
            base_url=str(settings.dialnexa_base_url),
            api_key=settings.dialnexa_api_key,
            connect_timeout_s=settings.http_connect_timeout_s,
            read_timeout_s=settings.http_read_timeout_s,
            max_connections=settings.concurrency,
        )
        stack.push_async_callback(http.aclose)
        runner = await start_server(build_app(readiness, registry), settings.http_host, settings.http_port)
        stack.push_async_callback(runner.cleanup)
        worker = Worker(settings, DialNexaClient(http, metrics), metrics, readiness)
        log.info(
            "service.started",
            http_port=settings.http_port,
            dialnexa_base_url=str(settings.dialnexa_base_url),
            concurrency=settings.concurrency,
            retry_delays_s=list(settings.retry_delays),
        )
        await worker.run(stop)
    log.info("service.stopped")
