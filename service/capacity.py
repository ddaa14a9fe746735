"""Everything between the core and the DialNexa client: admission, terminal cache, in-flight
slots, pacing.

`Capacity.admission(lane)` tells the core how many workflows a delivery may start: for the
campaign lane no more than the current pace can finish within the hold limit (`Admission`); the
complaint lane is never held back. `LaneApi(lane)` is what the core calls for one workflow. A call
goes through, in order:
1. the terminal cache: a workflow known to be terminal (a 2xx or 409 in the last while) is answered
   `already_terminal` without a request;
2. an in-flight slot: at most `concurrency` requests per process, of which `reserved` can only be
   taken by the complaint lane (campaign work gets the rest);
3. the pacer (rate budget, complaint priority; see `pacing`);
4. the request, whose rate-limit headers and 429s feed the pacer back.
Every wait before the request is bounded by the delivery's `start_by`: past it, `NotStarted`.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections.abc import Callable

from cachetools import TTLCache

from .dialnexa import DialNexaClient
from .metrics import Metrics
from .pacing import LANES, Lane, Pacer
from .ports import UNLIMITED, Admission, CancelResult, NotStarted, RateLimitedError

# How often a waiting delivery looks again without a give-back (the budget follows every answer).
_ADMISSION_NAP_S = 0.25


class PacedAdmission:
    """Admits campaign workflows so that each starts before its delivery's `start_by`.

    The work already admitted finishes at the pace the API allows, so a delivery may add only what
    the pace still fits before its own deadline: `pace x time left - admitted`. Deliveries are
    served oldest first; one that nothing fits for does not block a younger one that has room.
    With no pace known yet (no rate-limit headers, no static cap), `unpaced` at a time."""

    def __init__(
        self,
        pacer: Pacer,
        window_s: float,
        unpaced: int,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._pacer = pacer
        self._window_s = window_s
        self._unpaced = unpaced
        self._clock = clock
        self._waiting: list[tuple[object, float]] = []  # oldest first
        self._given_back = asyncio.Event()  # wakes the waiting deliveries when room frees
        self.in_flight = 0
        self.closing = False  # shutting down: nothing more is admitted

    def room(self, start_by: float) -> int:
        """How many more workflows the pace can start before `start_by`."""
        rps = self._pacer.sustained_rps()
        if rps is None:
            return self._unpaced - self.in_flight
        horizon = min(start_by - self._clock(), self._window_s)
        return int(rps * horizon) - self.in_flight

    def _grant(self, want: int, start_by: float) -> int:
        """Admit up to `want` if there is room (0 and nothing taken when there is none)."""
        granted = max(0, min(want, self.room(start_by)))
        self.in_flight += granted
        return granted

    async def take(self, want: int, start_by: float) -> int:
        if self.closing:
            return 0
        if not self._waiting and (granted := self._grant(want, start_by)):
            return granted
        token = object()
        self._waiting.append((token, start_by))
        try:
            while True:
                first_with_room = next((t for t, by in self._waiting if self.room(by) > 0), None)
                if first_with_room is token:
                    return self._grant(want, start_by)
                now = self._clock()
                if now >= start_by or self.closing:
                    return 0
                # Woken when workflows are given back; at least every nap, as the pace may change.
                self._given_back.clear()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(min(_ADMISSION_NAP_S, start_by - now)):
                        await self._given_back.wait()
        finally:
            self._waiting.remove((token, start_by))

    def give(self, count: int) -> None:
        self.in_flight = max(0, self.in_flight - count)
        if self._waiting:
            self._given_back.set()

    def close(self) -> None:
        self.closing = True


class Slots:
    """In-flight slots: the complaint lane may use all of them, campaign work all but `reserved`."""

    def __init__(self, total: int, reserved: int) -> None:
        self._total = asyncio.Semaphore(total)
        self._campaign = asyncio.Semaphore(max(1, total - reserved))

    async def acquire(self, lane: Lane, start_by: float = math.inf) -> None:
        """Take a slot; `NotStarted` when none is free before `start_by`. A timer is armed only
        when the slot is not free at once."""
        free = not self._total.locked() and (lane != "campaign" or not self._campaign.locked())
        if free or start_by == math.inf:
            await self._acquire(lane)
            return
        timeout = start_by - time.monotonic()
        if timeout <= 0:
            raise NotStarted("no request slot before the delivery's deadline")
        try:
            async with asyncio.timeout(timeout):
                await self._acquire(lane)
        except TimeoutError:
            raise NotStarted("no request slot before the delivery's deadline") from None

    async def _acquire(self, lane: Lane) -> None:
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

    async def cancel(self, workflow_id: str, start_by: float = math.inf) -> CancelResult:
        c = self._c
        known = c.cache.get(workflow_id)
        if known is not None:
            self._cache_hits.inc()
            return known
        started = time.perf_counter()
        await c.slots.acquire(self._lane, start_by)
        try:
            await c.pacer.acquire(self._lane, start_by)
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
