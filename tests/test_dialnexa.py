"""The DialNexa client through httpx.MockTransport: every answer of contract section 5."""

from __future__ import annotations

import io
import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import httpx
import pytest
import structlog
from prometheus_client import CollectorRegistry

from service.core.ports import (
    AuthError,
    CancelResult,
    RateLimitedError,
    RejectedError,
    ServerError,
    TransportError,
)
from service.dialnexa.client import DialNexaClient
from service.observe import logs
from service.observe.logs import valid_utf8
from service.observe.metrics import Metrics
from service.ratelimit.headers import RateLimit, parse_reset, parse_retry_after
from tests.support import MockSession

Handler = Callable[[httpx.Request], httpx.Response]
WORKFLOW = {
    "id": "wf_1",
    "name": "Outreach",
    "status": "cancelled",
    "node_count": 3,
    "created_at": "2026-01-01",
}


def client(handler: Handler) -> tuple[DialNexaClient, Metrics]:
    """A client whose every request is answered by `handler`, with fresh metrics."""
    metrics = Metrics.build(CollectorRegistry())
    return DialNexaClient(MockSession(handler), metrics), metrics


def answer(status: int, body: object = None, **headers: str) -> Handler:
    """A handler that always answers `status` with a JSON body and headers."""

    def handler(_request: httpx.Request) -> httpx.Response:
        return httpx.Response(status, json=body, headers=headers)

    return handler


def error_body(status: int, message: object = "nope") -> dict[str, object]:
    """DialNexa's error body."""
    return {"statusCode": status, "message": message, "error": "Error"}


async def test_request_shape() -> None:
    """POST {base}/workflows/{id}/cancel, no body, bearer key_id:secret, no idempotency key."""
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json=WORKFLOW)

    api, _ = client(handler)
    await api.cancel("wf_1")
    (request,) = seen
    assert request.method == "POST"
    assert str(request.url) == "https://api.example.test/v1/workflows/wf_1/cancel"
    assert request.headers["authorization"] == "Bearer key_1:s3cret"
    assert request.content == b""
    assert not any("idempotency" in name.lower() for name in request.headers)


@pytest.mark.parametrize(
    "body",
    [WORKFLOW, {"statusCode": 200, "message": "ok", "data": WORKFLOW}, {**WORKFLOW, "createdAt": "x"}],
    ids=["bare", "wrapped", "camel"],
)
async def test_2xx_is_cancelled_in_both_envelopes(body: object) -> None:
    """A 2xx body, bare or wrapped, gives outcome cancelled with the reported status."""
    api, metrics = client(answer(200, body))
    assert await api.cancel("wf_1") == CancelResult("wf_1", "cancelled", "cancelled")
    assert metrics.dialnexa_requests.labels("cancel", "200")._value.get() == 1


async def test_2xx_with_unreadable_body_is_still_cancelled() -> None:
    """An empty or non-JSON success body does not turn success into failure."""
    api, _ = client(lambda _r: httpx.Response(204))
    assert (await api.cancel("wf_1")).outcome == "cancelled"


async def test_409_is_already_terminal() -> None:
    """409 is success: already_terminal (status read from the body when present)."""
    api, _ = client(answer(409, {**error_body(409), "status": "completed"}))
    assert await api.cancel("wf_1") == CancelResult("wf_1", "already_terminal", "completed")


async def test_404_is_not_found() -> None:
    """404 is a final result, not an error."""
    api, _ = client(answer(404, error_body(404)))
    assert (await api.cancel("wf_1")).outcome == "not_found"


@pytest.mark.parametrize(
    ("status", "error"),
    [(500, ServerError), (502, ServerError), (503, ServerError), (504, ServerError),
     (401, AuthError), (403, AuthError), (400, RejectedError), (422, RejectedError),
     (418, RejectedError), (501, RejectedError), (302, RejectedError)],
)  # fmt: skip
async def test_error_statuses_map_to_the_tree(status: int, error: type[Exception]) -> None:
    """Each status raises the exception class of its row in contract section 5."""
    api, _ = client(answer(status, error_body(status)))
    with pytest.raises(error) as caught:
        await api.cancel("wf_1")
    assert caught.value.status_code == status  # type: ignore[attr-defined]
    assert caught.value.workflow_id == "wf_1"  # type: ignore[attr-defined]


async def test_validation_message_list_is_joined() -> None:
    """A list-valued `message` becomes one short text."""
    api, _ = client(answer(400, error_body(400, ["id must be short", "id is odd"])))
    with pytest.raises(RejectedError, match="id must be short; id is odd"):
        await api.cancel("wf_1")


async def test_429_carries_retry_after_seconds() -> None:
    """429 raises RateLimitedError with Retry-After in seconds."""
    api, _ = client(answer(429, error_body(429), **{"Retry-After": "7"}))
    with pytest.raises(RateLimitedError) as caught:
        await api.cancel("wf_1")
    assert caught.value.retry_after_s == 7.0


def test_retry_after_as_http_date() -> None:
    """Retry-After may be an HTTP date; it becomes seconds from now."""
    now = datetime(2026, 11, 29, 12, 0, tzinfo=UTC)
    later = format_datetime(now + timedelta(seconds=30), usegmt=True)
    assert parse_retry_after(later, now.timestamp()) == pytest.approx(30)
    assert parse_retry_after("soon", now.timestamp()) is None
    assert parse_retry_after(None, now.timestamp()) is None


def test_rate_limit_reset_in_both_readings() -> None:
    """X-RateLimit-Reset as seconds-until-reset or as a Unix time gives the same answer."""
    now = 1_800_000_000.0
    assert parse_reset("42", now) == 42
    assert parse_reset(str(now + 42), now) == pytest.approx(42)
    assert parse_reset(str(now - 5), now) == 0
    assert parse_reset("garbage", now) is None


@pytest.mark.parametrize("status", [200, 429, 503])
async def test_rate_limit_headers_reach_the_pacer(status: int) -> None:
    """Every answer's X-RateLimit headers, success or error, come back with the reply for the pacer."""
    headers = {"X-RateLimit-Limit": "150", "X-RateLimit-Remaining": "149", "X-RateLimit-Reset": "60"}
    api, _ = client(answer(status, WORKFLOW, **headers))
    reply = await api.send_cancel("wf_1")
    assert reply.rate_limit == RateLimit(limit=150, remaining=149, reset_after_s=60)


@pytest.mark.parametrize(
    "failure",
    [httpx.ConnectError("refused"), httpx.ReadTimeout("slow"), httpx.RemoteProtocolError("dropped")],
)
async def test_transport_failures_are_transport_errors(failure: Exception) -> None:
    """Timeouts and connection errors raise TransportError and are counted by kind."""

    def handler(_request: httpx.Request) -> httpx.Response:
        raise failure

    api, metrics = client(handler)
    with pytest.raises(TransportError):
        await api.cancel("wf_1")
    assert metrics.dialnexa_requests.labels("cancel", type(failure).__name__)._value.get() == 1


@pytest.mark.parametrize(("status", "ok"), [(200, True), (404, True), (401, False), (403, False)])
async def test_probe_accepts_200_and_404(status: int, ok: bool) -> None:
    """The credentials probe succeeds on 200/404 and raises AuthError on 401/403."""
    api, _ = client(answer(status, json.loads(json.dumps(WORKFLOW))))
    if ok:
        await api.probe("wf_probe")
    else:
        with pytest.raises(AuthError):
            await api.probe("wf_probe")


async def test_error_text_with_a_lone_surrogate_is_made_encodable() -> None:
    """A truncated emoji in DialNexa's error text cannot break the log line or the AMQP header."""
    raw = b'{"statusCode": 503, "message": "try later \\ud83d", "error": "Error"}'
    api, _ = client(lambda _request: httpx.Response(503, content=raw))
    with pytest.raises(ServerError) as caught:
        await api.cancel("wf_1")
    with pytest.raises(UnicodeEncodeError):
        str(caught.value).encode("utf-8")  # the API's text as it came
    assert valid_utf8(str(caught.value)) == "503: try later ?"  # what headers and log lines get
    buffer = io.StringIO()
    logs.configure("INFO", "json", stream=buffer)
    try:
        structlog.get_logger("test").warning("dialnexa.failed", error=caught.value)
    finally:
        logs.configure("INFO", "json")  # as the other log tests leave it
        structlog.reset_defaults()
    assert json.loads(buffer.getvalue())["error"] == "503: try later ?"
