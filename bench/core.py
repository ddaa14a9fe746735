"""The service's own per-event cost, without the broker or HTTP: `Intake.process` in one process.

Everything the worker does for one event except the I/O: delivery headers, parsing, the core,
the lane (terminal cache, slots, pacer), the client's reading of the answer (rate-limit headers,
classification), building the outbound event, settling and the metrics. The broker message, the
publisher and the HTTP session are instant stand-ins, so what is measured is the service's code and
the libraries it calls (pydantic, prometheus-client, structlog, cachetools, orjson), nothing else.

Timings on a shared VM move by 10-20 % from run to run; for a figure that does not, count
instructions: the per-event slope between two sizes, under valgrind, is the same on every run.

    python -m bench.core                     # CPU µs per event: min and median of 7 rounds
    valgrind --tool=callgrind --callgrind-out-file=/dev/null python -m bench.core --events 2000 --rounds 1
    valgrind --tool=callgrind --callgrind-out-file=/dev/null python -m bench.core --events 4000 --rounds 1
        # instructions per event = (Collected at 4000 - Collected at 2000) / 2000
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
import uuid
from datetime import datetime

from multidict import CIMultiDict, CIMultiDictProxy
from prometheus_client import CollectorRegistry
from pydantic import SecretStr

from service.app import build_gateway
from service.broker.intake import Intake
from service.broker.publisher import Publisher
from service.config import Settings
from service.dialnexa.http import Answer
from service.observe import logs
from service.observe.metrics import Metrics
from testkit import campaign, encoded

_HEADERS = CIMultiDictProxy(CIMultiDict([("Content-Type", "application/json"), ("Content-Length", "74")]))
WARM_UP = 500
_ANSWER = b'{"id":"wf_1","status":"cancelled","cancelled_at":"2026-11-29T18:00:00Z"}'


class InstantHttp:
    """Every call answers 200 at once, as the simulator does at zero latency."""

    async def request(self, method: str, path: str) -> Answer:
        return Answer(200, _HEADERS, _ANSWER, "OK")

    async def aclose(self) -> None:
        return None


class InstantPublisher(Publisher):
    """The service's publisher, building each outbound event as it does, whose every publish is
    confirmed at once; counted, so a run can show it took the success path."""

    def __init__(self) -> None:
        super().__init__(None, None, None, output_routing_key="workflow-cancelled", timeout_s=1.0)  # type: ignore[arg-type]
        self.published = 0

    async def _publish_cancelled(self, body: bytes, event_id: str, confirmed_at: datetime) -> None:
        self.published += 1


class Delivered:
    """The parts of an aio-pika incoming message the intake reads, for one campaign-ended event."""

    __slots__ = ("body", "content_type", "exchange", "headers", "message_id", "routing_key")

    def __init__(self, n: int) -> None:
        event_id = uuid.uuid4()
        self.body = encoded(campaign([f"wf_{n}"], str(event_id)))
        self.content_type = "application/cloudevents+json"
        self.exchange = "crm.events"
        self.headers: dict[str, object] = {}
        self.message_id = str(event_id)
        self.routing_key = "campaign-ended"

    async def ack(self) -> None:
        return None


async def measure(events: int, rounds: int, publisher: InstantPublisher | None = None) -> list[float]:
    """CPU µs per event of `Intake.process`, one figure per round of `events` new events."""
    settings = Settings(_env_file=None, dialnexa_api_key=SecretStr("key_1:s3cret"))  # type: ignore[call-arg]
    logs.configure("WARNING", "json")  # as the benchmarks run the worker
    metrics = Metrics.build(CollectorRegistry())
    intake = Intake(settings, build_gateway(settings, InstantHttp(), metrics), metrics)
    publisher = publisher or InstantPublisher()
    for n in range(WARM_UP):  # warm-up: caches, metric children, lazily built validators
        await intake.process(Delivered(n), publisher, "q")  # type: ignore[arg-type]
    figures = []
    for round_ in range(rounds):
        batch = [Delivered(events * (round_ + 1) + n) for n in range(events)]
        started = time.process_time()
        for message in batch:
            await intake.process(message, publisher, "q")  # type: ignore[arg-type]
        figures.append((time.process_time() - started) / events * 1e6)
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--events", type=int, default=5_000, help="events per round")
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    figures = asyncio.run(measure(args.events, args.rounds))
    print(
        f"CPU per event: min {min(figures):.1f} µs, median {statistics.median(figures):.1f} µs "
        f"({args.rounds} round(s) of {args.events:,} events)"
    )


if __name__ == "__main__":
    main()
