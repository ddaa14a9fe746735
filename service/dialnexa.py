"""A thin typed client for the DialNexa calls this service makes, over one HTTP session.

The session is httpx's API over an httpx transport (`HttpxSession`: `MockTransport` in the unit
tests, `httpx` or `httpx-aiohttp` by setting) or aiohttp directly (`service.transport`, the
measured default); either way the client reads answers as `Answer`s and transport failures as
httpx's `TransportError`s.

Every answer becomes either a `CancelResult` or one exception of the core's tree
(`service.ports`): `TransportError`, or a `StatusError` (`RateLimitedError`, `ServerError`,
`AuthError`, `RejectedError`). 404 on cancel is not an error: it is the final outcome `not_found`.
"""

from __future__ import annotations

import email.utils
import json
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal, Protocol

import httpx
import orjson
from pydantic import SecretStr

from .metrics import Children, Metrics
from .ports import AuthError as AuthError
from .ports import CancelOutcome as CancelOutcome
from .ports import CancelResult as CancelResult
from .ports import DialNexaError as DialNexaError
from .ports import RateLimitedError as RateLimitedError
from .ports import RejectedError as RejectedError
from .ports import ServerError as ServerError
from .ports import StatusError as StatusError
from .ports import TransportError as TransportError

TRANSIENT_STATUSES = frozenset({500, 502, 503, 504})
# A reset value above this is a Unix time, below it a number of seconds (about 11 days).
_EPOCH_THRESHOLD_S = 1_000_000.0


class Answer(Protocol):
    """What the client reads of an HTTP answer, whole: an `httpx.Response` is one."""

    @property
    def status_code(self) -> int: ...

    @property
    def headers(self) -> Mapping[str, str]:
        """Looked up case-insensitively."""
        ...

    @property
    def content(self) -> bytes: ...

    @property
    def reason_phrase(self) -> str: ...


@dataclass(frozen=True, slots=True)
class RateLimit:
    """What the X-RateLimit-* headers of one answer said (None where absent or unreadable)."""

    limit: int | None
    remaining: int | None
    reset_after_s: float | None


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


def _json(response: Answer) -> dict[str, Any]:
    """The body as a JSON object, or {} for anything else (not JSON, not UTF-8, nested too deep)."""
    try:
        body = orjson.loads(response.content)
    except orjson.JSONDecodeError:
        try:  # what orjson refuses but json reads, such as an escaped lone surrogate in a message
            body = json.loads(response.content)
        except (ValueError, RecursionError):  # json raises RecursionError on deeply nested arrays
            return {}
    return body if isinstance(body, dict) else {}


def unwrap(body: dict[str, Any]) -> dict[str, Any]:
    """The workflow object of a success body, bare or wrapped as {statusCode, message, data}."""
    data = body.get("data")
    if isinstance(data, dict) and ("statusCode" in body or "message" in body):
        return data
    return body


def error_message(response: Answer) -> str:
    """A short text from an error body: `message` (a string or a list of them) or the reason."""
    message = _json(response).get("message")
    if isinstance(message, list):
        message = "; ".join(_scalar_text(m) for m in message[:20])
    text = _scalar_text(message) if message else response.reason_phrase or "no message"
    return text[:200]


def _scalar_text(value: object) -> str:
    """A string or number as text; a nested structure by its kind (its repr could be huge or deep)."""
    return str(value) if isinstance(value, str | int | float | bool) else f"<{type(value).__name__}>"


def status_error(response: Answer, now: float) -> StatusError:
    """Map a non-success answer to the exception tree."""
    code = response.status_code
    message = error_message(response)
    if code == 429:
        return RateLimitedError(code, message, parse_retry_after(response.headers.get("retry-after"), now))
    if code in TRANSIENT_STATUSES:
        return ServerError(code, message)
    if code in (401, 403):
        return AuthError(code, message)
    return RejectedError(code, message)


def classify(workflow_id: str, response: Answer, now: float) -> CancelResult | StatusError:
    """What one answer to a cancel call means (docs/contract.md section 5): a result, or the error to raise.

    A pure function of the answer (status, headers, body) and the clock: 2xx `cancelled`, 409
    `already_terminal`, 404 `not_found`, anything else one `StatusError` of the tree above.
    """
    code = response.status_code
    if 200 <= code < 300:
        return CancelResult(workflow_id, "cancelled", _status_of(unwrap(_json(response))) or "cancelled")
    if code == 409:
        return CancelResult(workflow_id, "already_terminal", _status_of(unwrap(_json(response))))
    if code == 404:
        return CancelResult(workflow_id, "not_found")
    failure = status_error(response, now)
    failure.workflow_id = workflow_id
    return failure


HttpTransportKind = Literal["aiohttp", "httpx-aiohttp", "httpx"]


class HttpSession(Protocol):
    """The one long-lived line to DialNexa that the client sends its requests over."""

    async def request(self, method: str, path: str) -> Answer:
        """Send one request to `path` (relative to the base URL); the answer is read whole."""
        ...

    async def aclose(self) -> None: ...


def build_transport(kind: HttpTransportKind, max_connections: int) -> httpx.AsyncBaseTransport:
    """An httpx transport: httpx-aiohttp's adapter (`httpx-aiohttp`), which streams bodies, or
    httpx's own (`httpx`). `aiohttp` is not a transport but a session of its own (`service.transport`)."""
    limits = httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections)
    if kind == "httpx-aiohttp":
        from httpx_aiohttp import AiohttpTransport

        return AiohttpTransport(limits=limits)
    if kind == "httpx":
        return httpx.AsyncHTTPTransport(limits=limits)
    raise ValueError(f"{kind!r} is not an httpx transport")


class HttpxSession:
    """Requests as httpx `Request`s handed straight to an httpx transport.

    Serves `httpx.MockTransport` in the unit tests and the `httpx` and `httpx-aiohttp` choices.
    httpx's `AsyncClient` layer on top (cookie jar, redirects, auth flow, URL merging) took about a
    third of every call's CPU here and this API needs none of it (docs/benchmarks.md).
    """

    def __init__(
        self,
        base_url: str,
        headers: dict[str, str],
        timeout: httpx.Timeout,
        transport: httpx.AsyncBaseTransport,
    ) -> None:
        self._base_url = base_url.rstrip("/") + "/"
        self._headers = httpx.Headers(headers)  # normalised once, not per request
        self._extensions = {"timeout": timeout.as_dict()}
        self._transport = transport

    async def request(self, method: str, path: str) -> httpx.Response:
        """Send one request; the whole answer is read before it is returned."""
        request = httpx.Request(
            method, self._base_url + path, headers=self._headers, extensions=self._extensions
        )
        response = await self._transport.handle_async_request(request)
        try:
            await response.aread()
        finally:
            await response.aclose()
        return response

    async def aclose(self) -> None:
        await self._transport.aclose()


def build_http_client(
    *,
    base_url: str,
    api_key: SecretStr,
    connect_timeout_s: float,
    read_timeout_s: float,
    max_connections: int,
    kind: HttpTransportKind = "aiohttp",
    transport: httpx.AsyncBaseTransport | None = None,
) -> HttpSession:
    """The one long-lived HTTP session: explicit timeouts, pooled connections, bearer auth.

    `kind` is the measured choice (CANCELLER_HTTP_TRANSPORT); a given `transport` (a
    `MockTransport` in tests) overrides it.
    """
    headers = {
        "Authorization": f"Bearer {api_key.get_secret_value()}",
        "Accept": "application/json",
        "User-Agent": "workflow-canceller",
    }
    timeout = httpx.Timeout(read_timeout_s, connect=connect_timeout_s, pool=read_timeout_s)
    if transport is None and kind == "aiohttp":
        from .transport import AiohttpSession

        return AiohttpSession(base_url, headers, timeout, max_connections)
    return HttpxSession(base_url, headers, timeout, transport or build_transport(kind, max_connections))


class DialNexaClient:
    """The calls this service makes, over one injected `HttpSession`."""

    def __init__(
        self,
        http: HttpSession,
        metrics: Metrics,
        on_rate_limit: Callable[[RateLimit], None] | None = None,
        max_wait_s: float = math.inf,
    ) -> None:
        self._http = http
        # Retry-After and X-RateLimit-Reset are believed up to this long (a proxy's `1e9` or a
        # date in 2099 must not stop every call for that long): CANCELLER_MAX_RATE_LIMIT_WAIT_S.
        self._max_wait_s = max_wait_s
        self._requests = Children(metrics.dialnexa_requests)
        self._durations = Children(metrics.dialnexa_request_duration)
        self._on_rate_limit = on_rate_limit

    async def cancel(self, workflow_id: str) -> CancelResult:
        """POST workflows/{id}/cancel. Returns the outcome or raises a `DialNexaError`."""
        try:
            response = await self._send("cancel", "POST", f"workflows/{workflow_id}/cancel")
        except DialNexaError as error:
            error.workflow_id = workflow_id
            raise
        answer = classify(workflow_id, response, time.time())
        if isinstance(answer, RateLimitedError) and (answer.retry_after_s or 0.0) > self._max_wait_s:
            answer.retry_after_s = self._max_wait_s
        if isinstance(answer, StatusError):
            raise answer
        return answer

    async def probe(self, workflow_id: str) -> None:
        """Whether the key may cancel: a cancel of `workflow_id`, an id no workflow has.

        404 (no such workflow, and the key may cancel) or a 2xx / 409 pass; 401 / 403 raise
        `AuthError`; anything else raises its `StatusError`. A read (GET) would not do: a key can
        be allowed to read and not to cancel.
        """
        response = await self._send("probe", "POST", f"workflows/{workflow_id}/cancel")
        code = response.status_code
        if code == 404 or code == 409 or 200 <= code < 300:
            return
        raise status_error(response, time.time())

    async def _send(self, operation: str, method: str, path: str) -> Answer:
        started = time.perf_counter()
        try:
            response = await self._http.request(method, path)
        except httpx.TransportError as error:
            self._observe(operation, type(error).__name__, started)
            raise TransportError(f"{type(error).__name__}: {error}"[:200]) from error
        self._observe(operation, str(response.status_code), started)
        if self._on_rate_limit is not None:
            info = parse_rate_limit(response.headers, time.time())
            if info.reset_after_s is not None and info.reset_after_s > self._max_wait_s:
                info = RateLimit(info.limit, info.remaining, self._max_wait_s)
            self._on_rate_limit(info)
        return response

    def _observe(self, operation: str, status: str, started: float) -> None:
        self._requests(operation, status).inc()
        self._durations(operation).observe(time.perf_counter() - started)


def _status_of(body: dict[str, Any]) -> str | None:
    status = body.get("status")
    return status if isinstance(status, str) and len(status) <= 32 else None
