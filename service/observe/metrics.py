"""Prometheus metrics, built from a registry that is passed in.

Production passes the default registry; every test builds a fresh one. Label values are bounded
sets (event types, outcomes, status codes): never an id.
"""

from __future__ import annotations

import asyncio
import importlib.metadata
import platform
from dataclasses import dataclass
from typing import Generic, TypeVar

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info
from prometheus_client.metrics import MetricWrapperBase

# Latency buckets for one DialNexa call: local simulator (ms) up to a slow real API (10 s).
_REQUEST_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
# One event can hold 1,000 workflows drained at the API's rate limit: up to many minutes.
_EVENT_BUCKETS_S = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0)
# Waiting for a slot and the pacer: none at all up to a whole rate-limit window.
_WAIT_BUCKETS_S = (0.001, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


M = TypeVar("M", bound=MetricWrapperBase)


class Children(Generic[M]):
    """The children of one labelled metric, each looked up once per set of label values.

    `labels()` validates its arguments and takes a lock on every call; on the hot path, eight of
    them per event added up (docs/performance.md). Label values are bounded sets, so is this map.
    """

    __slots__ = ("_children", "_metric")

    def __init__(self, metric: M) -> None:
        self._metric = metric
        self._children: dict[tuple[str, ...], M] = {}

    def __call__(self, *values: str) -> M:
        child = self._children.get(values)
        if child is None:
            child = self._children[values] = self._metric.labels(*values)
        return child


@dataclass(frozen=True, slots=True)
class Metrics:
    """Every metric the service exports (docs/contract.md section 8, plus operational extras)."""

    events_received: Counter
    events_processed: Counter
    workflow_cancellations: Counter
    dialnexa_requests: Counter
    dialnexa_request_duration: Histogram
    dialnexa_retries: Counter
    event_processing_duration: Histogram
    event_age: Histogram
    events_published: Counter
    dead_lettered: Counter
    inflight_events: Gauge
    ready: Gauge
    credentials_valid: Gauge
    broker_reconnects: Counter
    inflight_requests: Gauge
    limiter_wait: Histogram
    pace: Gauge
    rate_limit_remaining: Gauge
    terminal_cache_hits: Counter
    asyncio_tasks: Gauge
    build_info: Info
    handed_off: Counter
    copies_refused: Counter
    rate_limit_pause: Gauge
    admitted_workflows: Gauge
    delivery_hold_max: Gauge

    @classmethod
    def build(cls, registry: CollectorRegistry) -> Metrics:
        """Create and register every metric in *registry*."""
        return cls(
            events_received=Counter(
                "canceller_events_received_total",
                "Input events received, by the type named in the body (unknown when unparseable).",
                ["event_type"],
                registry=registry,
            ),
            events_processed=Counter(
                "canceller_events_processed_total",
                "Input events settled, by what was done with the message.",
                ["event_type", "result"],
                registry=registry,
            ),
            workflow_cancellations=Counter(
                "canceller_workflow_cancellations_total",
                "Per-workflow results of cancel calls.",
                ["event_type", "outcome"],
                registry=registry,
            ),
            dialnexa_requests=Counter(
                "canceller_dialnexa_requests_total",
                "DialNexa API calls, by operation and HTTP status code (or error kind).",
                ["operation", "status_code"],
                registry=registry,
            ),
            dialnexa_request_duration=Histogram(
                "canceller_dialnexa_request_duration_seconds",
                "Duration of one DialNexa API call.",
                ["operation"],
                buckets=_REQUEST_BUCKETS_S,
                registry=registry,
            ),
            dialnexa_retries=Counter(
                "canceller_dialnexa_retries_total",
                "In-process retries of DialNexa calls, by the error that caused them.",
                ["reason"],
                registry=registry,
            ),
            event_processing_duration=Histogram(
                "canceller_event_processing_duration_seconds",
                "Time from taking a message to settling it (one delivery attempt).",
                ["event_type"],
                buckets=_EVENT_BUCKETS_S,
                registry=registry,
            ),
            event_age=Histogram(
                "canceller_event_age_seconds",
                "Age of an event (from its CloudEvents time, else its first receipt) when its"
                " work completed and it was acked.",
                ["event_type"],
                buckets=_EVENT_BUCKETS_S,
                registry=registry,
            ),
            events_published=Counter(
                "canceller_events_published_total",
                "Outbound events confirmed by the broker.",
                ["event_type"],
                registry=registry,
            ),
            dead_lettered=Counter(
                "canceller_dead_lettered_total",
                "Messages sent to the dead-letter queue, by reason.",
                ["reason"],
                registry=registry,
            ),
            inflight_events=Gauge(
                "canceller_inflight_events",
                "Input messages taken and not yet settled.",
                registry=registry,
            ),
            ready=Gauge(
                "canceller_ready",
                "1 while connected to the broker and consuming every input queue, else 0.",
                registry=registry,
            ),
            credentials_valid=Gauge(
                "canceller_dialnexa_credentials_valid",
                "0 while DialNexa rejects the API key (401/403) and consumption is paused, else 1.",
                registry=registry,
            ),
            broker_reconnects=Counter(
                "canceller_broker_reconnects_total",
                "Broker connections lost or refused, each followed by a reconnect attempt.",
                registry=registry,
            ),
            inflight_requests=Gauge(
                "canceller_inflight_requests",
                "DialNexa requests in flight, by lane (complaint or campaign).",
                ["lane"],
                registry=registry,
            ),
            limiter_wait=Histogram(
                "canceller_limiter_wait_seconds",
                "Time a DialNexa call waited for an in-flight slot and the rate pacer, by lane.",
                ["lane"],
                buckets=_WAIT_BUCKETS_S,
                registry=registry,
            ),
            pace=Gauge(
                "canceller_dialnexa_pace_rps",
                "Current pace of campaign calls from the rate-limit headers (requests/s; 0 when unpaced).",
                registry=registry,
            ),
            rate_limit_remaining=Gauge(
                "canceller_dialnexa_rate_limit_remaining",
                "X-RateLimit-Remaining of the latest DialNexa answer (the key's budget left in its window).",
                registry=registry,
            ),
            terminal_cache_hits=Counter(
                "canceller_terminal_cache_hits_total",
                "Cancel calls saved because the workflow was already known to be terminal, by lane.",
                ["lane"],
                registry=registry,
            ),
            asyncio_tasks=_task_gauge(registry),
            build_info=_build_info(registry),
            handed_off=Counter(
                "canceller_handed_off_total",
                "Deliveries acked after a continuation copy took over their unfinished workflows,"
                " by reason (hold_limit, not_due, credentials_rejected). Counted as `retried` in"
                " canceller_events_processed_total.",
                ["event_type", "reason"],
                registry=registry,
            ),
            copies_refused=Counter(
                "canceller_copies_refused_total",
                "Retry, continuation or DLQ copies the broker refused (unroutable or nacked); the"
                " message is given back after a growing delay.",
                ["kind"],
                registry=registry,
            ),
            rate_limit_pause=Gauge(
                "canceller_rate_limit_pause_seconds",
                "Seconds until DialNexa calls may start again after a 429 (0 when not paused).",
                registry=registry,
            ),
            admitted_workflows=Gauge(
                "canceller_admitted_workflows",
                "Campaign workflows admitted and not yet finished (admission follows the pace).",
                registry=registry,
            ),
            delivery_hold_max=Gauge(
                "canceller_delivery_hold_max_seconds",
                "The longest any delivery was held unacked since the process started"
                " (stays below CANCELLER_MAX_HOLD_S).",
                registry=registry,
            ),
        )


def version() -> str:
    """The installed package's version (`unknown` when run from a tree that is not installed)."""
    try:
        return importlib.metadata.version("workflow-canceller")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def _build_info(registry: CollectorRegistry) -> Info:
    """`canceller_build_info{version, python}` = 1: which release each pod runs."""
    info = Info("canceller_build", "The running release of workflow-canceller.", registry=registry)
    info.info({"version": version(), "python": platform.python_version()})
    return info


def _task_gauge(registry: CollectorRegistry) -> Gauge:
    """Tasks alive in the event loop, read at scrape time (the scrape runs on that loop): a leak
    shows as a count that grows with traffic instead of following the work in flight."""
    gauge = Gauge(
        "canceller_asyncio_tasks",
        "asyncio tasks alive in the worker's event loop.",
        registry=registry,
    )
    gauge.set_function(_count_tasks)
    return gauge


def _count_tasks() -> float:
    try:
        return float(len(asyncio.all_tasks()))
    except RuntimeError:  # scraped outside the loop (tests reading the registry directly)
        return 0.0
