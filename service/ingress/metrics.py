"""The ingress's Prometheus metrics (`canceller_ingress_*`)."""

from __future__ import annotations

from dataclasses import dataclass

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
)

from . import signing

_PUBLISH_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


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
        for reason in signing.SIGNATURE_FAILURES:
            metrics.signature_failures.labels(reason)
        return metrics
