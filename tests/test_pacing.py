"""The pacer and the in-flight slots, on a virtual clock: who may call when."""

from __future__ import annotations

import asyncio
import itertools
import math
import time

import pytest

from service.core.ports import CancelResult
from service.dialnexa.gateway import TerminalCache
from service.ratelimit.admission import PacedAdmission, Slots
from service.ratelimit.headers import RateLimit
from service.ratelimit.pacer import Pacer


class Clock:
    """A virtual clock whose sleep advances time instead of waiting."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.now += seconds


def pacer(clock: Clock, **kwargs: float) -> Pacer:
    """A pacer on the virtual clock."""
    return Pacer(clock=clock, sleep=clock.sleep, **kwargs)  # type: ignore[arg-type]


async def start_times(p: Pacer, clock: Clock, lane: str, count: int) -> list[float]:
    """When each of `count` sequential calls of `lane` may start."""
    times = []
    for _ in range(count):
        await p.acquire(lane)  # type: ignore[arg-type]
        times.append(round(clock.now - 1000.0, 3))
    return times


async def test_no_headers_no_waiting() -> None:
    """Without rate-limit headers or a cap, calls never wait."""
    clock = Clock()
    assert await start_times(pacer(clock), clock, "campaign", 5) == [0.0] * 5


async def test_static_cap_spaces_both_lanes() -> None:
    """CANCELLER_DIALNEXA_MAX_RPS=4 spaces every call by 0.25 s, whatever the lane."""
    clock = Clock()
    p = pacer(clock, max_rps=4)
    assert await start_times(p, clock, "campaign", 3) == [0.0, 0.25, 0.5]
    assert await start_times(p, clock, "complaint", 1) == [0.75]


async def test_campaign_spreads_what_is_left_over_the_window() -> None:
    """100 left for 10 s, reserve 5: campaign calls come every 10/95 s, evenly."""
    clock = Clock()
    p = pacer(clock, reserve_share=0.05)
    p.observe(RateLimit(limit=100, remaining=100, reset_after_s=10))
    times = await start_times(p, clock, "campaign", 4)
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert all(gap == pytest.approx(10 / 95, abs=0.01) for gap in gaps), gaps


async def test_campaign_never_spends_the_complaint_reserve() -> None:
    """With only the reserve left, campaign waits for the next window while complaints go at once."""
    clock = Clock()
    p = pacer(clock, reserve_share=0.05)
    p.observe(RateLimit(limit=100, remaining=5, reset_after_s=8))
    assert await start_times(p, clock, "complaint", 3) == [0.0, 0.0, 0.0]
    (campaign_start,) = await start_times(p, clock, "campaign", 1)
    assert campaign_start >= 8.0


async def test_complaint_is_not_paced_behind_campaign() -> None:
    """While campaign calls are spaced out, a complaint call starts immediately."""
    clock = Clock()
    p = pacer(clock)
    p.observe(RateLimit(limit=60, remaining=60, reset_after_s=60))
    await start_times(p, clock, "campaign", 1)
    before = clock.now
    await p.acquire("complaint")
    assert clock.now == before


async def test_429_blocks_both_lanes_until_retry_after() -> None:
    """After a 429 with Retry-After 3, no lane starts a call sooner."""
    clock = Clock()
    p = pacer(clock)
    p.block(3.0)
    assert await start_times(p, clock, "complaint", 1) == [3.0]


async def test_shared_key_slows_each_replica() -> None:
    """Another replica's calls show up as a lower remaining: our pace drops with it."""
    clock = Clock()
    p = pacer(clock, reserve_share=0.0)
    p.observe(RateLimit(limit=100, remaining=100, reset_after_s=10))
    alone = p.pace_rps()
    clock.now += 1
    p.observe(RateLimit(limit=100, remaining=40, reset_after_s=9))  # others spent 60 in 1 s
    shared = p.pace_rps()
    assert alone is not None and shared is not None
    assert shared == pytest.approx(40 / 9, rel=0.01)
    assert shared < alone / 2


async def test_new_window_restores_the_budget() -> None:
    """When the window resets, the budget is back without waiting for an answer."""
    clock = Clock()
    p = pacer(clock, reserve_share=0.0)
    p.observe(RateLimit(limit=10, remaining=0, reset_after_s=2))
    (first,) = await start_times(p, clock, "complaint", 1)
    assert first == pytest.approx(2.0, abs=0.3)
    assert p.remaining == 9


async def test_reset_given_as_rounded_up_seconds_keeps_the_earliest_end() -> None:
    """Later answers of one window with a rounded-up reset do not push the window's end out."""
    clock = Clock()
    p = pacer(clock, reserve_share=0.0)
    p.observe(RateLimit(limit=50, remaining=49, reset_after_s=10))
    clock.now += 0.5
    p.observe(RateLimit(limit=50, remaining=40, reset_after_s=10))  # ceil(9.5)
    assert p.pace_rps() == pytest.approx(40 / 9.5, rel=0.01)


async def test_slots_reserve_capacity_for_complaints() -> None:
    """Campaign work takes at most total - reserved slots; a complaint still gets one."""
    slots = Slots(total=4, reserved=1)
    for _ in range(3):
        await slots.acquire("campaign")
    fourth = asyncio.ensure_future(slots.acquire("campaign"))
    await asyncio.sleep(0)
    assert not fourth.done()
    await asyncio.wait_for(slots.acquire("complaint"), 1)
    slots.release("campaign")
    await asyncio.wait_for(fourth, 1)


async def test_complaints_may_use_every_slot() -> None:
    """With no campaign work, complaints can fill all slots."""
    slots = Slots(total=3, reserved=1)
    for _ in range(3):
        await asyncio.wait_for(slots.acquire("complaint"), 1)


def test_terminal_cache_remembers_terminal_results_only() -> None:
    """2xx and 409 results are remembered as already_terminal; 404 is not; size 0 disables it."""
    cache = TerminalCache(size=10, ttl_s=60)
    cache.remember(CancelResult("wf_1", "cancelled", "cancelled"))
    cache.remember(CancelResult("wf_2", "not_found"))
    assert cache.get("wf_1") == CancelResult("wf_1", "already_terminal", "cancelled")
    assert cache.get("wf_2") is None
    off = TerminalCache(size=0, ttl_s=60)
    off.remember(CancelResult("wf_1", "cancelled", "cancelled"))
    assert off.get("wf_1") is None


async def test_admission_follows_the_pace_and_the_deadline() -> None:
    """With a known pace, a delivery is admitted `pace x time left - admitted` workflows; one with
    no room gets 0 at its deadline instead of waiting on."""
    pacer = Pacer(reserve_share=0.05)
    pacer.observe(RateLimit(limit=150, remaining=150, reset_after_s=60))
    admission = PacedAdmission(pacer, window_s=260, unpaced=32)
    now = time.monotonic()
    assert await admission.take(1_000, now + 260) == int(2.375 * 260)  # 617 of 1,000
    started = time.monotonic()
    assert await admission.take(10, time.monotonic() + 0.3) == 0  # nothing fits: no wait past it
    assert 0.25 <= time.monotonic() - started < 1.0


async def test_a_waiting_delivery_is_admitted_as_soon_as_work_is_given_back() -> None:
    """Unpaced, the budget is `unpaced`; a give-back wakes the waiting delivery at once, not at
    its next look."""
    admission = PacedAdmission(Pacer(), window_s=260, unpaced=4)
    assert await admission.take(10, math.inf) == 4
    waiting = asyncio.create_task(admission.take(3, math.inf))
    await asyncio.sleep(0)  # it is waiting now
    assert not waiting.done()
    given = time.monotonic()
    admission.give(2)
    assert await asyncio.wait_for(waiting, 1) == 2
    assert time.monotonic() - given < 0.1  # woken by the give-back, not by the 0.25 s look
