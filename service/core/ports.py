"""What the core needs from the outside world, in the core's own terms.

The core (`service.core.handle`) owns these types; the DialNexa gateway and the broker's
publisher import them and implement them, never the other way round.

Every failure of one cancel call is one exception of this tree:

    DialNexaError
    ├── TransportError        timeouts, refused or dropped connections: retryable
    ├── NotStarted            the call could not start before the delivery's deadline: not tried
    └── StatusError           an HTTP answer we cannot use as success (has status_code)
        ├── RateLimitedError  429: retryable no sooner than `retry_after_s`
        ├── ServerError       500, 502, 503, 504: retryable
        ├── AuthError         401, 403: our credentials, not the message's fault
        └── RejectedError     any other status (400, 422, other 4xx, 501, 3xx): permanent
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, Protocol

if TYPE_CHECKING:
    from .events import InboundEvent

CancelOutcome = Literal["cancelled", "already_terminal", "not_found"]


@dataclass(frozen=True, slots=True)
class CancelResult:
    workflow_id: str
    outcome: CancelOutcome
    status: str | None = None


class DialNexaError(Exception):
    """Base of every error a cancel call raises; `workflow_id` names the call's workflow, if any."""

    workflow_id: str | None = None


class TransportError(DialNexaError):
    """No usable HTTP answer: timeout, refused or dropped connection, unreadable response."""


class NotStarted(DialNexaError):
    """The call was not made: no slot, budget or pace was free before the delivery's deadline."""


class StatusError(DialNexaError):
    """DialNexa answered with a status we cannot treat as success."""

    def __init__(self, status_code: int, message: str) -> None:
        super().__init__(f"{status_code}: {message}")
        self.status_code = status_code
        self.message = message


class RateLimitedError(StatusError):
    """429: wait at least `retry_after_s` (when given) before the next call."""

    def __init__(self, status_code: int, message: str, retry_after_s: float | None) -> None:
        super().__init__(status_code, message)
        self.retry_after_s = retry_after_s


class ServerError(StatusError):
    """500, 502, 503, 504: DialNexa had a transient problem."""


class AuthError(StatusError):
    """401 or 403: the API key is missing, wrong, revoked or lacks permission."""


class RejectedError(StatusError):
    """Any other status: retrying the same request will not help."""


class PublishRefused(Exception):
    """The broker did not accept an outbound message: retry like a 5xx. `reason` is
    `unroutable` (no queue bound) or `refused` (nacked)."""

    def __init__(self, reason: Literal["unroutable", "refused"], detail: str) -> None:
        super().__init__(detail)
        self.reason = reason


class CancelApi(Protocol):
    """DialNexa's cancel call as the core sees it."""

    async def cancel(self, workflow_id: str, start_by: float = math.inf) -> CancelResult:
        """Cancel one workflow; raise `NotStarted` rather than start the call after `start_by`."""
        ...


class Announcer(Protocol):
    """Where the core announces each settled workflow (a `workflow-cancelled` event)."""

    async def workflow_cancelled(self, trigger: InboundEvent, result: CancelResult) -> None:
        """Publish `result`, caused by `trigger`; returns once the broker confirmed it, raises
        `PublishRefused` when the broker would not take it."""
        ...


class Admission(Protocol):
    """How many workflows a delivery may start now, so that the pace can finish them in time."""

    async def take(self, want: int, start_by: float) -> int:
        """Up to `want` workflows admitted (0 when none could be before `start_by`)."""
        ...

    def give(self, count: int) -> None:
        """Hand back admissions of workflows that finished or were not started."""
        ...

    def close(self) -> None:
        """Shutting down: admit nothing more, and let waiting deliveries go at once."""
        ...


class Unlimited:
    """An `Admission` that admits everything at once (complaints, tests)."""

    async def take(self, want: int, start_by: float) -> int:
        return want

    def give(self, count: int) -> None:
        return None

    def close(self) -> None:
        return None


UNLIMITED = Unlimited()
