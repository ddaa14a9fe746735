"""Pacing DialNexa calls to the rate limit the API reports, with a complaint lane.

DialNexa limits requests per API key in fixed windows and says where the current window stands on
every answer (`X-RateLimit-Limit`, `-Remaining`, `-Reset`). The `Pacer` spreads the campaign lane's
calls evenly over what is left of the window: the gap between two campaign calls is
`time left in the window / (remaining - reserve)`. Because `remaining` is the key's budget as every
replica sees it, replicas sharing one key slow each other down without talking to each other: each
spends what is left at the same even pace, so together they drain the window smoothly and do not
run it dry before it resets.

The last `reserve` requests of every window are never spent by campaign work: they belong to the
complaint lane, which is not paced at all while budget remains, so a complaint's call starts at once
even while a large campaign drains at the limit. After a 429 both lanes wait for its `Retry-After`.
An optional static cap (`max_rps`) applies to both lanes. With no rate-limit headers (and no cap)
the pacer never waits.

aiolimiter's leaky bucket was the first candidate; it has one rate and no priorities, and the rate
here changes on every answer, so this small scheduler replaces it.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Awaitable, Callable
from typing import Literal

from ..core.ports import NotStarted
from .headers import RateLimit

Lane = Literal["complaint", "campaign"]
LANES: tuple[Lane, ...] = ("complaint", "campaign")

# Re-check at least this often while waiting: a newer answer may have moved the window.
_MAX_NAP_S = 0.25
# Without a known window end, an exhausted budget is checked again after this long.
_UNKNOWN_RESET_WAIT_S = 1.0


class Pacer:
    """Decides when the next call of each lane may start."""

    def __init__(
        self,
        *,
        reserve_share: float = 0.05,
        max_rps: float | None = None,
        reorder_slack: int = 16,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self._reserve_share = reserve_share
        self._min_gap_s = 1.0 / max_rps if max_rps else 0.0
        self._slack = reorder_slack
        self._clock = clock
        self._sleep = sleep
        self.limit: int | None = None
        self.remaining: float | None = None  # budget left in this window, for every replica
        self._reset_at: float | None = None
        self._window_s: float | None = None
        self._last_header_remaining: int | None = None
        self._blocked_until = 0.0
        self._next_campaign_at = 0.0
        self._next_any_at = 0.0
        self.closing = False  # shutting down: no waiting call starts any more

    # --- what the API tells us ----------------------------------------------------------------

    def observe(self, info: RateLimit) -> None:
        """Take in one answer's rate-limit headers."""
        if info.remaining is None or info.reset_after_s is None:
            return
        now = self._clock()
        reset_at = now + info.reset_after_s
        if info.limit is not None:
            self.limit = info.limit
        jumped = (
            self._last_header_remaining is not None
            and info.remaining > self._last_header_remaining + self._slack
        )
        if self._reset_at is None or now >= self._reset_at or jumped:
            # A new window: its length is what the first answer in it says is left.
            self._reset_at = reset_at
            self._window_s = max(info.reset_after_s, 0.001)
            self.remaining = float(info.remaining)
        else:
            # Same window: reset values are rounded up, so the earliest estimate is the best one;
            # the header's remaining is older than our own later sends, so keep the lower figure.
            self._reset_at = min(self._reset_at, reset_at)
            self.remaining = min(
                self.remaining if self.remaining is not None else info.remaining, info.remaining
            )
        self._last_header_remaining = info.remaining

    def block(self, retry_after_s: float | None) -> None:
        """A 429: nothing starts before Retry-After (1 s when the answer did not say)."""
        wait = retry_after_s if retry_after_s is not None else 1.0
        self._blocked_until = max(self._blocked_until, self._clock() + wait)
        if self.remaining is not None:
            self.remaining = 0.0

    # --- what we may do -----------------------------------------------------------------------

    @property
    def reserve(self) -> float:
        """Requests per window kept for the complaint lane."""
        if self.limit is None or self._reserve_share <= 0:
            return 0.0
        return max(1.0, self.limit * self._reserve_share)

    def pace_rps(self) -> float | None:
        """The campaign lane's current pace in requests per second (None: not paced by headers)."""
        if self.remaining is None or self._reset_at is None:
            return 1.0 / self._min_gap_s if self._min_gap_s else None
        left_s = max(self._reset_at - self._clock(), 0.001)
        rate = max(self.remaining - self.reserve, 0.0) / left_s
        return min(rate, 1.0 / self._min_gap_s) if self._min_gap_s else rate

    def sustained_rps(self) -> float | None:
        """The campaign lane's long-run pace: the window's budget less the complaint reserve, over
        the window (None while neither headers nor a static cap say)."""
        rate = None
        if self.limit is not None and self._window_s:
            rate = max(self.limit - self.reserve, 1.0) / self._window_s
        if self._min_gap_s:
            cap = 1.0 / self._min_gap_s
            rate = cap if rate is None else min(rate, cap)
        return rate

    def blocked_for(self) -> float:
        """Seconds until calls may start again after a 429 (0 when not blocked)."""
        return max(0.0, self._blocked_until - self._clock())

    async def acquire(self, lane: Lane, start_by: float = math.inf) -> float:
        """Wait until a call of `lane` may start and account for it; returns the seconds waited.

        Raises `NotStarted` at once when the call could not start before `start_by`."""
        started = self._clock()
        while True:
            now = self._clock()
            delay = self._delay(lane, now)
            if delay <= 0:
                self._take(lane, now)
                return now - started
            if now + delay > start_by or self.closing:
                raise NotStarted(f"the {lane} lane's next call is {delay:.1f} s away")
            await self._sleep(min(delay, _MAX_NAP_S))

    def _roll(self, now: float) -> None:
        """Past the window's end, assume a fresh window of the same length until an answer says."""
        if self._reset_at is not None and now >= self._reset_at and self.limit is not None:
            self.remaining = float(self.limit)
            self._reset_at = now + (self._window_s or 1.0)

    def _delay(self, lane: Lane, now: float) -> float:
        if now < self._blocked_until:
            return self._blocked_until - now
        self._roll(now)
        static = self._next_any_at - now
        if self.remaining is None:
            return static
        floor = 1.0 if lane == "complaint" else self.reserve + 1.0
        if self.remaining < floor:
            return (self._reset_at - now) if self._reset_at is not None else _UNKNOWN_RESET_WAIT_S
        if lane == "complaint":
            return static
        return max(static, self._next_campaign_at - now)

    def _take(self, lane: Lane, now: float) -> None:
        self._next_any_at = now + self._min_gap_s
        if self.remaining is None:
            return
        if lane == "campaign" and self._reset_at is not None:
            usable = max(self.remaining - self.reserve, 1.0)
            self._next_campaign_at = now + max(self._reset_at - now, 0.0) / usable
        self.remaining -= 1
