"""What one DialNexa answer says about the rate limit: `X-RateLimit-*` and `Retry-After`."""

from __future__ import annotations

import email.utils
import math
from collections.abc import Mapping
from dataclasses import dataclass

# A reset value above this is a Unix time, below it a number of seconds (about 11 days).
_EPOCH_THRESHOLD_S = 1_000_000.0


@dataclass(frozen=True, slots=True)
class RateLimit:
    """What the X-RateLimit-* headers of one answer said (None where absent or unreadable)."""

    limit: int | None
    remaining: int | None
    reset_after_s: float | None

    def capped(self, max_wait_s: float) -> RateLimit:
        """The same, believing a reset no further away than `max_wait_s`."""
        if self.reset_after_s is None or self.reset_after_s <= max_wait_s:
            return self
        return RateLimit(self.limit, self.remaining, max_wait_s)


def parse_reset(value: str | None, now: float) -> float | None:
    """X-RateLimit-Reset as seconds from now: documented as a Unix time, observed as seconds."""
    number = _number(value)
    if number is None:
        return None
    if number > _EPOCH_THRESHOLD_S:
        return max(0.0, number - now)
    return max(0.0, number)


def parse_retry_after(value: str | None, now: float) -> float | None:
    """Retry-After as seconds from now: either delay-seconds or an HTTP date."""
    if value is None:
        return None
    number = _number(value)
    if number is not None:
        return max(0.0, number)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - now)


def parse_rate_limit(headers: Mapping[str, str], now: float) -> RateLimit:
    """The rate-limit headers of one answer."""
    limit = _number(headers.get("x-ratelimit-limit"))
    remaining = _number(headers.get("x-ratelimit-remaining"))
    return RateLimit(
        limit=int(limit) if limit is not None else None,
        remaining=int(remaining) if remaining is not None else None,
        reset_after_s=parse_reset(headers.get("x-ratelimit-reset"), now),
    )


def _number(value: str | None) -> float | None:
    if value is None:
        return None
    try:
        number = float(value.strip())
    except ValueError:
        return None
    return number if math.isfinite(number) else None
