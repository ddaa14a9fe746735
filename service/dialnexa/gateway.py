"""The core's view of DialNexa: one `CancelApi` per lane, and each lane's admission.

A call for one workflow goes through, in order:
1. the terminal cache: a workflow known to be terminal (a 2xx or 409 in the last while) is answered
   `already_terminal` without a request;
2. an in-flight slot of its lane (`service.ratelimit.admission.Slots`);
3. the pacer (rate budget, complaint priority; `service.ratelimit.pacer`);
4. the request (`service.dialnexa.client`), whose rate-limit headers and 429s feed the pacer back.
Every wait before the request is bounded by the delivery's `start_by`: past it, `NotStarted`.
"""

from __future__ import annotations

import math
import time

from cachetools import TTLCache

from ..core.ports import UNLIMITED, Admission, CancelResult, RateLimitedError
from ..observe.metrics import Metrics
from ..observe.tracing import note_wait
from ..ratelimit.admission import Slots
from ..ratelimit.headers import RateLimit
from ..ratelimit.pacer import LANES, Lane, Pacer
from .client import DialNexaClient


class TerminalCache:
    """A bounded, expiring memory of workflows known to be terminal, with their status."""

    def __init__(self, size: int, ttl_s: float) -> None:
        self._entries: TTLCache[str, str | None] | None = TTLCache(size, ttl_s) if size > 0 else None

    def get(self, workflow_id: str) -> CancelResult | None:
        if self._entries is None or workflow_id not in self._entries:
            return None
        return CancelResult(workflow_id, "already_terminal", self._entries[workflow_id])

    def remember(self, result: CancelResult) -> None:
        if self._entries is not None and result.outcome != "not_found":
            self._entries[result.workflow_id] = result.status


class Gateway:
    """The process-wide pieces every lane shares, and the lanes."""

    def __init__(
        self,
        client: DialNexaClient,
        pacer: Pacer,
        slots: Slots,
        cache: TerminalCache,
        metrics: Metrics,
        campaign_admission: Admission = UNLIMITED,
    ) -> None:
        self.client = client
        self.pacer = pacer
        self.slots = slots
        self.cache = cache
        self.metrics = metrics
        self._lanes = {lane: LaneApi(self, lane) for lane in LANES}
        self._admissions: dict[Lane, Admission] = {"complaint": UNLIMITED, "campaign": campaign_admission}
        self.closing = False

    def is_closing(self) -> bool:
        return self.closing

    def close(self) -> None:
        """Shutting down: no further call starts; handlers hand what is left on and settle."""
        self.closing = True
        self.pacer.closing = True
        for admission in self._admissions.values():
            admission.close()

    def lane(self, lane: Lane) -> LaneApi:
        return self._lanes[lane]

    def admission(self, lane: Lane) -> Admission:
        """Complaints are never held back; campaign work follows the pace."""
        return self._admissions[lane]

    def observe(self, info: RateLimit) -> None:
        """One answer's rate-limit headers: to the pacer, and to the gauges."""
        self.pacer.observe(info)
        if info.remaining is not None:
            self.metrics.rate_limit_remaining.set(info.remaining)
        self.metrics.pace.set(self.pacer.pace_rps() or 0.0)


class LaneApi:
    """The core's `CancelApi` for events of one lane."""

    def __init__(self, gateway: Gateway, lane: Lane) -> None:
        self._g = gateway
        self._lane = lane
        metrics = gateway.metrics
        self._cache_hits = metrics.terminal_cache_hits.labels(lane)
        self._inflight = 0  # read by the gauge at scrape time: no lock taken per call
        metrics.inflight_requests.labels(lane).set_function(lambda: self._inflight)
        self._waits = metrics.limiter_wait.labels(lane)

    async def cancel(self, workflow_id: str, start_by: float = math.inf) -> CancelResult:
        g = self._g
        known = g.cache.get(workflow_id)
        if known is not None:
            self._cache_hits.inc()
            return known
        started = time.perf_counter()
        await g.slots.acquire(self._lane, start_by)
        try:
            await g.pacer.acquire(self._lane, start_by)
            self._waits.observe(time.perf_counter() - started)
            note_wait(self._lane, started, workflow_id)  # a span event, only while a span records
            self._inflight += 1
            try:
                reply = await g.client.send_cancel(workflow_id)
            finally:
                self._inflight -= 1
        finally:
            g.slots.release(self._lane)
        g.observe(reply.rate_limit)
        if isinstance(reply.meaning, RateLimitedError):
            g.pacer.block(reply.meaning.retry_after_s)
        result = reply.result()
        g.cache.remember(result)
        return result
