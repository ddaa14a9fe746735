"""Log secrecy at every level, in exception traces too, through structlog and stdlib loggers.

Real failures are raised and logged through `service.observe.logs` exactly as configured by the worker
(secrets from `secret_values(settings)`): an httpx error carrying a URL with credentials, a broker
URL inside an exception, a pydantic validation error quoting a phone number, a webhook secret. No
secret and no phone number may appear in the output, whatever the level, format or logger.
"""

from __future__ import annotations

import io
import json
import logging
import re
from collections.abc import Callable, Iterator
from typing import Annotated, Any

import httpx
import pytest
import structlog
from pydantic import BaseModel, StringConstraints, ValidationError

from service.config import Settings, secret_values
from service.core.ports import TransportError
from service.observe import logs
from tests.support import MockSession

API_KEY = "key_live_7f3a:Sup3rS3cretV4lue"
KEY_SECRET = "Sup3rS3cretV4lue"
BROKER_PASSWORD = "br0ker/pa@ss"  # written percent-encoded in the URL, decoded on the wire
AMQP_URL = "amqps://canceller:br0ker%2Fpa%40ss@rabbit.example.test:5671/prod"
WEBHOOK_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
PHONE = "+15555550123"
SECRETS = (API_KEY, KEY_SECRET, BROKER_PASSWORD, "br0ker%2Fpa%40ss", WEBHOOK_SECRET, PHONE, PHONE[1:])
LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")


class _Complaint(BaseModel):
    phone_number: Annotated[str, StringConstraints(max_length=5)]  # pydantic quotes the input in errors


@pytest.fixture
def settings() -> Settings:
    """Worker settings holding every kind of secret the service knows about."""
    return Settings(_env_file=None, dialnexa_api_key=API_KEY, amqp_url=AMQP_URL)


@pytest.fixture
def configured(settings: Settings) -> Iterator[Callable[[str, str], io.StringIO]]:
    """Configure logging like the worker does (`configure(level, format)`) into a fresh stream."""

    def configure(level: str, fmt: str = "json") -> io.StringIO:
        stream = io.StringIO()
        logs.configure(level, fmt, secrets=secret_values(settings), stream=stream)  # type: ignore[arg-type]
        return stream

    yield configure
    logs.configure("INFO", "json")
    structlog.reset_defaults()


def httpx_error_with_credentials() -> httpx.ConnectError:
    """What httpx raises for a URL with credentials and the key in a header."""
    request = httpx.Request(
        "POST",
        f"https://user:{KEY_SECRET}@api.dialnexa.test/v1/workflows/wf_1/cancel",
        headers={"Authorization": f"Bearer {API_KEY}"},
    )
    return httpx.ConnectError(
        f"cannot reach {request.url} with {request.headers['authorization']}", request=request
    )


def raise_and_catch(make: Callable[[], BaseException]) -> BaseException:
    """An exception with a real traceback (raised, chained, caught)."""
    try:
        try:
            raise make()
        except BaseException as inner:
            raise RuntimeError(f"while calling with {API_KEY}: {inner}") from inner
    except RuntimeError as outer:
        return outer


def validation_error() -> ValidationError:
    """pydantic's own error text quotes the input: here a phone number."""
    with pytest.raises(ValidationError, match=re.escape(PHONE)) as caught:  # the leak is real
        _Complaint.model_validate({"phone_number": PHONE})
    return caught.value


FAILURES: dict[str, Callable[[], BaseException]] = {
    "httpx error with credentials in the URL": httpx_error_with_credentials,
    "broker URL in an exception": lambda: ConnectionError(f"cannot connect to {AMQP_URL}"),
    "decoded broker password": lambda: PermissionError(f"login refused for password {BROKER_PASSWORD}"),
    "validation error quoting a phone number": validation_error,
    "webhook secret": lambda: ValueError(f"signature check with {WEBHOOK_SECRET} failed"),
    "formatted phone number": lambda: ValueError("lead +1 555 555 0123 complained"),
    "national phone formats": lambda: ValueError(
        "call (555) 555-0123 or 555-555-0123 or 555 555 0123 or 020 7946 0958"
    ),
}


def assert_clean(text: str) -> None:
    """None of the secrets, nor the phone number in any form, appears in `text`."""
    for secret in (*SECRETS, "+1 555 555 0123", "555-0123", "555 0123", "7946 0958"):
        assert secret not in text, f"{secret!r} leaked:\n{text}"
    assert "[redacted]" in text  # the line was written, with the secret masked


@pytest.mark.parametrize("level", LEVELS)
@pytest.mark.parametrize("name", list(FAILURES))
def test_structlog_exception_traces_are_masked(configured: Any, level: str, name: str) -> None:
    """`log.exception`/`exc_info` and the error as a value: masked at every level, chained causes too."""
    stream = configured(level)
    error = raise_and_catch(FAILURES[name])
    log = structlog.get_logger("workflow_canceller.test")
    emit = getattr(log, level.lower())
    emit("test.failed", error=error, note=str(error.__cause__), exc_info=error)
    try:
        raise error
    except RuntimeError:
        log.exception("test.exception", cause=error.__cause__)
    text = stream.getvalue()
    lines = [json.loads(line) for line in text.splitlines()]
    assert [line["event"] for line in lines] == ["test.failed", "test.exception"]
    assert "Traceback" in lines[0]["exception"] and "Traceback" in lines[1]["exception"]
    assert_clean(text)


@pytest.mark.parametrize("level", LEVELS)
@pytest.mark.parametrize("name", list(FAILURES))
def test_stdlib_logger_traces_are_masked(configured: Any, level: str, name: str) -> None:
    """A library-style stdlib logger (`logging.exception`, %-args) goes through the same masking."""
    stream = configured(level)
    error = raise_and_catch(FAILURES[name])
    logger = logging.getLogger("some.library")
    logger.log(logging.getLevelName(level), "failed: %s (url %s)", error, AMQP_URL)
    try:
        raise error
    except RuntimeError:
        logger.exception("while handling %r", error)
    text = stream.getvalue()
    assert len(text.splitlines()) == 2 and "Traceback" in text
    assert_clean(text)


@pytest.mark.parametrize("fmt", ["json", "console"])
def test_values_of_every_shape_are_masked(configured: Any, fmt: str) -> None:
    """Secrets inside lists, tuples, nested dicts, bytes, objects and sensitive keys never pass."""
    stream = configured("DEBUG", fmt)
    structlog.get_logger("t").debug(
        "test.shapes",
        listed=[API_KEY, {"deep": (KEY_SECRET,)}],
        raw=f"password={BROKER_PASSWORD}".encode(),
        url=httpx.URL(f"https://u:{KEY_SECRET}@h.test/"),
        headers={"Authorization": f"Bearer {API_KEY}"},
        phone_number=PHONE,
        text=f"call {PHONE} now, key {API_KEY}",
    )
    assert_clean(stream.getvalue())


def test_known_values_pass_unchanged(configured: Any) -> None:
    """Masking leaves ordinary values alone: ids, timestamps, addresses, counts."""
    stream = configured("INFO")
    values = {
        "workflow_id": "wf_795a6ff6_0",
        "event_id": "ad6dc16c-e94b-5608-904d-91a819b4a014",
        "url": "http://127.0.0.1:8089/v1",
        "when": "2026-11-29T13:52:53.010461Z",
        "count": 15555550123,
        "reason": "2 workflow(s) failed; first: 503: Service Unavailable",
    }
    structlog.get_logger("t").info("test.plain", **values)
    (line,) = [json.loads(text) for text in stream.getvalue().splitlines()]
    assert {key: line[key] for key in values} == values


@pytest.mark.parametrize("level", LEVELS)
async def test_dialnexa_transport_error_logged_without_the_key(configured: Any, level: str) -> None:
    """A real client failure (transport raising with the request in hand) logs no key at any level."""
    stream = configured(level)

    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError(
            f"refused: {request.headers['authorization']} {request.url}", request=request
        )

    http = MockSession(refuse, base_url=f"https://user:{KEY_SECRET}@api.dialnexa.test/v1", api_key=API_KEY)
    log = structlog.get_logger("workflow_canceller.test")
    try:
        await http.request("POST", "workflows/wf_1/cancel")
    except TransportError as failure:
        getattr(log, level.lower())("dialnexa.failed", error=failure, exc_info=failure)
    assert_clean(stream.getvalue())


@pytest.mark.parametrize("level", LEVELS)
def test_console_format_masks_traces(configured: Any, level: str) -> None:
    """`CANCELLER_LOG_FORMAT=console` renders the same masked trace for people."""
    stream = configured(level, "console")
    error = raise_and_catch(FAILURES["httpx error with credentials in the URL"])
    try:
        raise error
    except RuntimeError:
        structlog.get_logger("t").exception("test.exception", url=AMQP_URL)
    assert "Traceback" in stream.getvalue()
    assert_clean(stream.getvalue())


@pytest.mark.parametrize(
    ("line", "number"),
    [
        ("please call (555) 555-0123 today", "(555) 555-0123"),
        ("please call 555-555-0123 today", "555-555-0123"),
        ("please call 555 555 0123 today", "555 555 0123"),
        ("please call 020 7946 0958 today", "020 7946 0958"),
        ("please call +44 20 7946 0958 today", "+44 20 7946 0958"),
        ("please call 15555550123 today", "15555550123"),
    ],
)
def test_each_phone_format_is_masked_on_a_line_of_its_own(line: str, number: str) -> None:
    """Every format the redactor promises, alone on its line (no other number to trip the pre-check)."""
    masked = logs.mask_shapes(line)
    assert number not in masked
    assert masked == line.replace(number, "[redacted]")
