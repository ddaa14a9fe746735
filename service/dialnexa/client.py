"""The DialNexa calls this service makes, over one `HttpSession` (`service.dialnexa.http`).

Every answer becomes either a `CancelResult` or one exception of the core's tree
(`service.core.ports`): a `TransportError` (no answer: `service.dialnexa.http`'s failures), or a
`StatusError` (`RateLimitedError`, `ServerError`, `AuthError`, `RejectedError`). 404 on cancel is
not an error: it is the final outcome `not_found`. `classify` is that mapping, a pure function of
the answer and the clock.

`send_cancel` returns a `Reply`: what the answer means and what its rate-limit headers said, so
the caller (`service.dialnexa.gateway`) feeds the pacer in the same straight line.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import orjson
from opentelemetry.trace import SpanKind, Status, StatusCode

from ..core.ports import (
    AuthError,
    CancelResult,
    DialNexaError,
    RateLimitedError,
    RejectedError,
    ServerError,
    StatusError,
    TransportError,
)
from ..observe.metrics import Children, Metrics
from ..observe.tracing import Tracing
from ..ratelimit.headers import RateLimit, parse_rate_limit, parse_retry_after
from .http import Answer, HttpSession

TRANSIENT_STATUSES = frozenset({500, 502, 503, 504})
CANCEL_ROUTE = "workflows/{id}/cancel"  # the route template: spans are named by it, never by an id
# Answers the contract treats as outcomes, not failures: no error on their client spans.
_NOT_ERRORS = frozenset({404, 409})


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


@dataclass(frozen=True, slots=True)
class Reply:
    """One answer to a cancel call: what it means, and what its rate-limit headers said."""

    meaning: CancelResult | StatusError
    rate_limit: RateLimit

    def result(self) -> CancelResult:
        """The outcome, or the `StatusError` raised."""
        if isinstance(self.meaning, StatusError):
            raise self.meaning
        return self.meaning


class DialNexaClient:
    """The calls this service makes, over one injected `HttpSession`."""

    def __init__(
        self,
        http: HttpSession,
        metrics: Metrics,
        max_wait_s: float = math.inf,
        *,
        tracing: Tracing | None = None,
        base_url: str = "",
    ) -> None:
        self._http = http
        self._tracing = tracing or Tracing()
        # For the client spans: the route template under the base URL's path, and the server.
        base = urlsplit(base_url)
        self._route = base.path.rstrip("/") + "/" + CANCEL_ROUTE
        self._server: dict[str, str | int] = {"server.address": base.hostname or ""}
        if base.hostname:
            self._server["server.port"] = base.port or (443 if base.scheme == "https" else 80)
        # Retry-After and X-RateLimit-Reset are believed up to this long (a proxy's `1e9` or a
        # date in 2099 must not stop every call for that long): CANCELLER_MAX_RATE_LIMIT_WAIT_S.
        self._max_wait_s = max_wait_s
        self._requests = Children(metrics.dialnexa_requests)
        self._durations = Children(metrics.dialnexa_request_duration)

    async def cancel(self, workflow_id: str) -> CancelResult:
        """POST workflows/{id}/cancel. Returns the outcome or raises a `DialNexaError`."""
        return (await self.send_cancel(workflow_id)).result()

    async def send_cancel(self, workflow_id: str) -> Reply:
        """POST workflows/{id}/cancel: what the answer means and its rate-limit headers.
        Raises only a `TransportError` (no answer)."""
        try:
            response = await self._send("cancel", "POST", f"workflows/{workflow_id}/cancel", workflow_id)
        except DialNexaError as error:
            error.workflow_id = workflow_id
            raise
        now = time.time()
        meaning = classify(workflow_id, response, now)
        if isinstance(meaning, RateLimitedError) and (meaning.retry_after_s or 0.0) > self._max_wait_s:
            meaning.retry_after_s = self._max_wait_s
        return Reply(meaning, parse_rate_limit(response.headers, now).capped(self._max_wait_s))

    async def probe(self, workflow_id: str) -> None:
        """Whether the key may cancel: a cancel of `workflow_id`, an id no workflow has.

        404 (no such workflow, and the key may cancel) or a 2xx / 409 pass; 401 / 403 raise
        `AuthError`; anything else raises its `StatusError`. A read (GET) would not do: a key can
        be allowed to read and not to cancel.
        """
        response = await self._send("probe", "POST", f"workflows/{workflow_id}/cancel", workflow_id)
        code = response.status_code
        if code == 404 or code == 409 or 200 <= code < 300:
            return
        raise status_error(response, time.time())

    async def _send(self, operation: str, method: str, path: str, workflow_id: str) -> Answer:
        if self._tracing.on:
            return await self._traced(operation, method, path, workflow_id)
        return await self._untraced(operation, method, path)

    async def _traced(self, operation: str, method: str, path: str, workflow_id: str) -> Answer:
        """The request inside an HTTP client span named by the route template (the id is an attribute)."""
        attributes: dict[str, str | int] = {
            "http.request.method": method,
            "url.template": self._route,
            **self._server,
            "dialnexa.operation": operation,
            "dialnexa.workflow.id": workflow_id,
        }
        with self._tracing.tracer.start_as_current_span(
            f"{method} {self._route}",
            kind=SpanKind.CLIENT,
            attributes=attributes,
            record_exception=False,
            set_status_on_exception=False,
        ) as span:
            try:
                response = await self._untraced(operation, method, path)
            except TransportError as error:
                span.set_attribute("error.type", type(error).__name__)
                span.set_status(Status(StatusCode.ERROR, str(error)[:200]))
                raise
            code = response.status_code
            span.set_attribute("http.response.status_code", code)
            if code >= 400 and code not in _NOT_ERRORS:
                span.set_attribute("error.type", str(code))
                span.set_status(Status(StatusCode.ERROR))
            return response

    async def _untraced(self, operation: str, method: str, path: str) -> Answer:
        started = time.perf_counter()
        try:
            response = await self._http.request(method, path)
        except TransportError as error:
            self._observe(operation, type(error).__name__, started)
            raise
        self._observe(operation, str(response.status_code), started)
        return response

    def _observe(self, operation: str, status: str, started: float) -> None:
        self._requests(operation, status).inc()
        self._durations(operation).observe(time.perf_counter() - started)


def _status_of(body: dict[str, Any]) -> str | None:
    status = body.get("status")
    return status if isinstance(status, str) and len(status) <= 32 else None
