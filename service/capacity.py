"""Everything between the core and the DialNexa client: terminal cache, in-flight slots, pacing.

`LaneApi(lane)` is what the core calls for one event. A call goes through, in order:
1. the terminal cache: a workflow known to be terminal (a 2xx or 409 in the last while) is answered
   `already_terminal` without a request;
2. an in-flight slot: at most `concurrency` requests per process, of which `reserved` can only be
   taken by the complaint lane (campaign work gets the rest);
3. the pacer (rate budget, complaint priority; see `pacing`);
4. the request, whose rate-limit headers and 429s feed the pacer back.
"""

from __future__ import annotations

import asyncio
import time

from cachetools import TTLCache

from .dialnexa import CancelResult, DialNexaClient, RateLimitedError
from .metrics import Metrics
from .pacing import LANES, Lane, Pacer


class Slots:
    """In-flight slots: the complaint lane may use all of them, campaign work all but `reserved`."""

    def __init__(self, total: int, reserved: int) -> None:
        self._total = asyncio.Semaphore(total)
        self._campaign = asyncio.Semaphore(max(1, total - reserved))

    async def acquire(self, lane: Lane) -> None:
        if lane == "campaign":
            await self._campaign.acquire()
            try:
                await self._total.acquire()
            except BaseException:
                self._campaign.release()
                raise
        else:
            await self._total.acquire()

    def release(self, lane: Lane) -> None:
        self._total.release()
        if lane == "campaign":
            self._campaign.release()


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


class Capacity:
    """The process-wide pieces every lane shares."""

    def __init__(
        self, client: DialNexaClient, pacer: Pacer, slots: Slots, cache: TerminalCache, metrics: Metrics
    ) -> None:
        self.client = client
        self.pacer = pacer
        self.slots = slots
        self.cache = cache
        self.metrics = metrics
        self._lanes = {lane: LaneApi(self, lane) for lane in LANES}

    def lane(self, lane: Lane) -> LaneApi:
        return self._lanes[lane]


class LaneApi:
    """The core's view of DialNexa for events of one lane."""

    def __init__(self, capacity: Capacity, lane: Lane) -> None:
        self._c = capacity
        self._lane = lane
        metrics = capacity.metrics
        self._cache_hits = metrics.terminal_cache_hits.labels(lane)
        self._inflight = 0  # read by the gauge at scrape time: no lock taken per call
        metrics.inflight_requests.labels(lane).set_function(lambda: self._inflight)
        self._waits = metrics.limiter_wait.labels(lane)

    async def cancel(self, workflow_id: str) -> CancelResult:
        c = self._c
        known = c.cache.get(workflow_id)
        if known is not None:
            self._cache_hits.inc()
            return known
        started = time.perf_counter()
        await c.slots.acquire(self._lane)
        try:
            await c.pacer.acquire(self._lane)
            self._waits.observe(time.perf_counter() - started)
            self._inflight += 1
            try:
                result = await c.client.cancel(workflow_id)
            except RateLimitedError as error:
                c.pacer.block(error.retry_after_s)
                raise
            finally:
                self._inflight -= 1
        finally:
            c.slots.release(self._lane)
        c.cache.remember(result)
        return result
