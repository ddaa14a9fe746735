"""How much work may start: in-flight slots per lane, and the campaign lane's admission.

`Slots`: at most `concurrency` requests per process, of which `reserved` can only be taken by the
complaint lane (campaign work gets the rest). `PacedAdmission`: how many campaign workflows a
delivery may start, no more than the current pace can finish within the hold limit; the complaint
lane is never held back (`UNLIMITED`). Every wait is bounded by the delivery's `start_by`: past
it, `NotStarted`.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections.abc import Callable

from ..core.ports import NotStarted
from .pacer import Lane, Pacer

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
