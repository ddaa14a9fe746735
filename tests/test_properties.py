"""Property-based tests (hypothesis): the event parser and the DialNexa answer classifier.

Every test runs a fixed, derandomized set of examples, so a run in CI sees the same inputs as a run
on a laptop; a failure prints the smallest input that breaks the property.
"""

from __future__ import annotations

import asyncio
import json
import math
import re
from datetime import UTC, datetime
from email.utils import format_datetime
from typing import Any

import httpx
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry

from service.core.events import EVENT_TYPES, MAX_WORKFLOWS, CampaignEnded, InvalidEvent, cloudevent, parse
from service.core.ports import (
    AuthError,
    CancelResult,
    DialNexaError,
    RateLimitedError,
    RejectedError,
    ServerError,
    StatusError,
    TransportError,
)
from service.dialnexa.client import DialNexaClient, classify
from service.observe.metrics import Metrics
from service.ratelimit.headers import parse_rate_limit
from service.retry import RetryPolicy
from tests.support import MockSession

PROFILE = settings(
    derandomize=True,  # the same examples on every run: CI is reproducible
    deadline=None,
    database=None,
    max_examples=100,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
MAX_BYTES = 64 * 1024
WORKFLOW_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,127}")  # contract section 3, matched whole
PHONE = "+15555550199"

# --- strategies: bytes, content types, and JSON close to valid events ------------------------------

content_types = st.one_of(
    st.none(),
    st.sampled_from(
        [
            "",
            "application/json",
            "application/cloudevents+json",
            "application/json; charset=utf-8",
            "APPLICATION/CloudEvents+JSON ; charset=utf-8",
            "text/plain",
            "application/xml",
            "application/cloudevents-batch+json",
            ";",
        ]
    ),
    st.text(max_size=100),
)
valid_ids = st.from_regex(WORKFLOW_ID, fullmatch=True)
junk_ids = st.one_of(
    st.text(max_size=140),
    st.sampled_from(
        ["../admin", "wf_1/../../x", "wf 1", "wf_1\n", "-wf", "_wf", "wf%2F1", "é", "", "a" * 129]
    ),
    st.integers(),
    st.none(),
    st.lists(st.integers(), max_size=2),
)
id_lists = st.one_of(
    st.lists(valid_ids, min_size=1, max_size=20),
    st.lists(st.one_of(valid_ids, junk_ids), max_size=20),
    st.just([f"wf_{n}" for n in range(MAX_WORKFLOWS)]),
    st.just([f"wf_{n}" for n in range(MAX_WORKFLOWS + 1)]),
    st.just([]),
    st.text(max_size=20),
    st.none(),
)
json_leaves = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), st.text(max_size=30)
)
json_junk = st.recursive(
    json_leaves,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)


def maybe(value: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """Mostly the value; sometimes something of another shape, or the key left out (`_ABSENT`)."""
    return st.sampled_from(["value"] * 18 + ["junk", "absent"]).flatmap(
        lambda roll: {"junk": json_junk, "absent": st.just(_ABSENT)}.get(roll, value)
    )


_ABSENT = object()


@st.composite
def near_events(draw: st.DrawFn) -> dict[str, Any]:
    """A JSON object shaped like an input event, each part valid most of the time."""
    data = {
        "campaign_id": draw(maybe(st.text(min_size=1, max_size=40))),
        "complaint_id": draw(maybe(st.text(min_size=1, max_size=40))),
        "workflow_ids": draw(maybe(id_lists)),
        "reason": draw(maybe(st.text(max_size=20))),
        "lead_id": draw(maybe(st.text(max_size=20))),
        "phone_number": draw(maybe(st.just(PHONE))),
    }
    event = {
        "specversion": draw(maybe(st.sampled_from(["1.0"] * 6 + ["0.3", "1", "1.0 "]))),
        "id": draw(maybe(st.sampled_from(["text"] * 8 + ["long", "empty"]).flatmap(_event_ids))),
        "source": draw(maybe(st.text(min_size=1, max_size=40))),
        "type": draw(maybe(st.sampled_from([*EVENT_TYPES * 4, "lead-created", "", "CAMPAIGN-ENDED"]))),
        "time": draw(
            maybe(st.sampled_from(["2026-11-29T10:00:00Z", "2026-11-29T10:00:00+02:00", "yesterday"]))
        ),
        "data": draw(maybe(st.just(data))),
        "extra": draw(maybe(json_junk)),
    }
    return _present(event)


def _event_ids(kind: str) -> st.SearchStrategy[str]:
    return {"long": st.just("e" * 257), "empty": st.just("")}.get(kind, st.text(min_size=1, max_size=60))


def _present(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _present(v) for k, v in value.items() if v is not _ABSENT}
    return value


@st.composite
def near_bodies(draw: st.DrawFn) -> bytes:
    """Serialised near-events, sometimes truncated or with one byte changed."""
    body = json.dumps(draw(near_events())).encode()
    cut = draw(st.sampled_from(["whole"] * 6 + ["truncate", "mutate"]))
    if cut == "truncate" and body:
        return body[: draw(st.integers(0, len(body) - 1))]
    if cut == "mutate" and body:
        index = draw(st.integers(0, len(body) - 1))
        return body[:index] + bytes([draw(st.integers(0, 255))]) + body[index + 1 :]
    return body


def assert_valid_by_contract(event: Any) -> None:
    """What a parsed event guarantees to the rest of the service (contract section 3)."""
    assert event.type in EVENT_TYPES
    assert event.specversion == "1.0"
    assert 1 <= len(event.id) <= 256
    ids = event.data.workflow_ids
    assert 1 <= len(ids) <= MAX_WORKFLOWS
    assert all(isinstance(i, str) and WORKFLOW_ID.fullmatch(i) for i in ids), ids
    assert len(set(ids)) == len(ids)
    if isinstance(event, CampaignEnded):
        assert event.data.campaign_id
    else:
        assert event.data.complaint_id


def parse_or_reject(body: bytes, content_type: str | None) -> Any:
    """Parse; an `InvalidEvent` is returned instead of raised. Any other exception fails the test."""
    try:
        event = parse(body, content_type, MAX_BYTES)
    except InvalidEvent as error:
        text = str(error)
        assert text and len(text) <= 512 and "\n" not in text, text  # a short, header-safe reason
        return error
    assert_valid_by_contract(event)
    return event


# --- the parser -----------------------------------------------------------------------------------


@PROFILE
@given(body=st.binary(max_size=4096), content_type=content_types)
@example(body=b"[" * 100_000, content_type=None)
@example(body=b'{"a": "\xff\xfe"}', content_type="application/json")
@example(body=b"\xef\xbb\xbf{}", content_type=None)
@example(body=b"x" * (MAX_BYTES + 1), content_type=None)
def test_any_bytes_are_an_event_or_invalid(body: bytes, content_type: str | None) -> None:
    """Any byte string with any content type parses to a contract-valid event or raises InvalidEvent."""
    parse_or_reject(body, content_type)


@PROFILE
@given(body=near_bodies(), content_type=content_types)
def test_near_valid_events_are_an_event_or_invalid(body: bytes, content_type: str | None) -> None:
    """JSON close to a valid event (and its truncations and mutations) never escapes InvalidEvent."""
    parse_or_reject(body, content_type)


@PROFILE
@given(event=near_events())
def test_valid_content_types_accept_what_the_schema_accepts(event: dict[str, Any]) -> None:
    """With an accepted content type, the outcome depends only on the body, never on the header."""
    body = json.dumps(event).encode()
    outcomes = {
        type(parse_or_reject(body, ct)).__name__
        for ct in (None, "", "application/json", "application/cloudevents+json; charset=utf-8")
    }
    assert len(outcomes) == 1, outcomes


@PROFILE
@given(ids=st.lists(valid_ids, min_size=1, max_size=30), kind=st.sampled_from(EVENT_TYPES))
def test_valid_events_are_accepted_and_ids_kept_in_order(ids: list[str], kind: str) -> None:
    """Every event built to the contract parses, its ids de-duplicated in first-seen order."""
    event = cloudevent(kind, ids, campaign_id="cmp_1", complaint_id="cpl_1")
    parsed = parse_or_reject(json.dumps(event).encode(), "application/cloudevents+json")
    assert not isinstance(parsed, InvalidEvent), parsed
    assert list(parsed.data.workflow_ids) == list(dict.fromkeys(ids))


@PROFILE
@given(
    event=near_events(),
    where=st.sampled_from(["id", "source", "campaign_id", "complaint_id", "reason", "id0"]),
)
def test_rejections_never_quote_the_phone_number(event: dict[str, Any], where: str) -> None:
    """An error text never repeats input values: a phone number placed anywhere but `type` stays out."""
    data = event.get("data")
    if where == "id0" and isinstance(data, dict) and isinstance(data.get("workflow_ids"), list):
        data["workflow_ids"] = [PHONE, *data["workflow_ids"]]
    elif where in ("id", "source"):
        event[where] = PHONE
    elif isinstance(data, dict):
        data[where] = [PHONE]  # the wrong type: a schema error about exactly that field
    outcome = parse_or_reject(json.dumps(event).encode(), None)
    if isinstance(outcome, InvalidEvent):
        assert PHONE not in str(outcome) and PHONE[1:] not in str(outcome)


# --- the answer classifier --------------------------------------------------------------------------

NOW = 1_800_000_000.0
TRANSIENT = {500, 502, 503, 504}
ROWS = ("cancelled", "already_terminal", "not_found", "rate_limited", "transient", "credentials", "permanent")

http_dates = st.datetimes(
    min_value=datetime(1990, 1, 1), max_value=datetime(2090, 1, 1), timezones=st.just(UTC)
).map(lambda d: format_datetime(d, usegmt=True))
numbers_as_text = st.one_of(
    st.integers(-(10**12), 10**12).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.sampled_from(["1e400", "-0", "0x10", "1_000", " 5 ", "5s", "NaN", "inf"]),
)
garbage_text = st.text(
    alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=40
)  # header values must be printable ASCII on the wire
retry_afters = st.one_of(st.none(), numbers_as_text, http_dates, garbage_text)
rate_values = st.one_of(st.none(), numbers_as_text, garbage_text)
workflow_body = st.fixed_dictionaries(
    {"id": valid_ids},
    optional={
        "status": st.one_of(
            st.sampled_from(["cancelled", "completed", "active"]), st.text(max_size=40), json_leaves
        ),
        "createdAt": st.text(max_size=10),
        "node_count": st.integers(),
    },
)
message_values = st.one_of(st.text(max_size=300), st.lists(json_junk, max_size=5), json_junk)
bodies = st.one_of(
    workflow_body.map(json.dumps),
    st.builds(
        lambda d, c, m: json.dumps({"statusCode": c, "message": m, "data": d}),
        workflow_body,
        st.integers(),
        message_values,
    ),
    st.builds(
        lambda c, m: json.dumps({"statusCode": c, "message": m, "error": "Error"}),
        st.integers(),
        message_values,
    ),
    json_junk.map(json.dumps),
    st.binary(max_size=200),
    st.sampled_from(
        [b"", b"null", b"[" * 50_000, b'{"message": ' + b"[" * 900 + b"]" * 900 + b"}", b"\xff\xfe{"]
    ),
)


@st.composite
def answers(draw: st.DrawFn) -> httpx.Response:
    """Any status 100-599 with any combination of Retry-After, X-RateLimit-* and body."""
    headers: dict[str, str] = {}
    for name, values in (
        ("Retry-After", retry_afters),
        ("X-RateLimit-Limit", rate_values),
        ("X-RateLimit-Remaining", rate_values),
        ("X-RateLimit-Reset", rate_values),
    ):
        value = draw(values)
        if value is not None:
            headers[name] = value
    body = draw(bodies)
    content = body.encode() if isinstance(body, str) else body
    return httpx.Response(draw(st.integers(100, 599)), headers=headers, content=content)


def row_of(answer: CancelResult | StatusError) -> str:
    """The one row of contract section 5 an answer falls in (asserting it falls in exactly one)."""
    if isinstance(answer, CancelResult):
        return answer.outcome
    matches = [
        row
        for row, kind in (
            ("rate_limited", RateLimitedError),
            ("transient", ServerError),
            ("credentials", AuthError),
            ("permanent", RejectedError),
        )
        if isinstance(answer, kind)
    ]
    assert len(matches) == 1, (answer, matches)
    return matches[0]


def expected_row(status: int) -> str:
    """Contract section 5, row by row."""
    if 200 <= status < 300:
        return "cancelled"
    return {
        409: "already_terminal",
        404: "not_found",
        429: "rate_limited",
        401: "credentials",
        403: "credentials",
    }.get(status, "transient" if status in TRANSIENT else "permanent")


@PROFILE
@given(response=answers())
@example(response=httpx.Response(503, content=b"[" * 100_000))
@example(response=httpx.Response(200, content=b"[" * 100_000))
@example(response=httpx.Response(429, headers={"Retry-After": "Wed, 21 Oct 2015 07:28:00 GMT"}))
@example(response=httpx.Response(429, headers={"Retry-After": "Mon, 32 Foo 99999 99:99:99 +9999"}))
@example(response=httpx.Response(400, content=b'{"message": ' + b"[" * 950 + b"]" * 950 + b"}"))
def test_every_answer_maps_to_exactly_one_row(response: httpx.Response) -> None:
    """Every status, header and body combination maps to its one row of contract section 5."""
    answer = classify("wf_1", response, NOW)
    assert row_of(answer) == expected_row(response.status_code)
    assert row_of(answer) in ROWS
    if isinstance(answer, CancelResult):
        assert answer.workflow_id == "wf_1"
        assert answer.status is None or (isinstance(answer.status, str) and len(answer.status) <= 32)
        if answer.outcome == "cancelled":
            assert answer.status is not None
    else:
        assert answer.status_code == response.status_code and answer.workflow_id == "wf_1"
        assert isinstance(answer.message, str) and len(answer.message) <= 200
        assert len(str(answer)) <= 220
    if isinstance(answer, RateLimitedError) and answer.retry_after_s is not None:
        assert math.isfinite(answer.retry_after_s) and answer.retry_after_s >= 0


@PROFILE
@given(response=answers())
def test_rate_limit_headers_never_raise(response: httpx.Response) -> None:
    """X-RateLimit-* headers read as numbers or None, whatever they hold."""
    info = parse_rate_limit(response.headers, NOW)
    for value in (info.limit, info.remaining):
        assert value is None or isinstance(value, int)
    assert info.reset_after_s is None or (math.isfinite(info.reset_after_s) and info.reset_after_s >= 0)


@PROFILE
@given(response=answers())
def test_retry_policy_decides_every_classified_error(response: httpx.Response) -> None:
    """The retry predicate gives a yes, a no or a finite wait for every error the classifier makes."""
    answer = classify("wf_1", response, NOW)
    if isinstance(answer, StatusError):
        decision = RetryPolicy(broker_delays_s=(1.0,)).backoff_hook(answer)
        assert decision is True or decision is False or (math.isfinite(decision) and 0 <= decision <= 30)
        assert (decision is not False) == (row_of(answer) in ("rate_limited", "transient")) or (
            isinstance(answer, RateLimitedError) and (answer.retry_after_s or 0) > 30
        )


@settings(PROFILE, max_examples=60)
@given(response=answers(), fail=st.sampled_from([None, "connect", "read-timeout", "protocol"]))
def test_client_raises_only_its_own_errors(response: httpx.Response, fail: str | None) -> None:
    """Through the real client and MockTransport, a cancel returns a result or raises a DialNexaError."""
    failures = {
        "connect": httpx.ConnectError("refused"),
        "read-timeout": httpx.ReadTimeout("slow"),
        "protocol": httpx.RemoteProtocolError("dropped"),
    }

    def handler(_request: httpx.Request) -> httpx.Response:
        if fail is not None:
            raise failures[fail]
        return httpx.Response(response.status_code, headers=response.headers, content=response.content)

    http = MockSession(handler)
    api = DialNexaClient(http, Metrics.build(CollectorRegistry()))
    outcome = asyncio.run(_cancel_or_error(api))
    if fail is not None:
        assert isinstance(outcome, TransportError)
    elif isinstance(outcome, DialNexaError):
        assert isinstance(outcome, StatusError)
        assert row_of(outcome) == expected_row(response.status_code)
    else:
        assert outcome.outcome == expected_row(response.status_code)
    if isinstance(outcome, DialNexaError):
        assert outcome.workflow_id == "wf_1"
        assert "s3cret" not in str(outcome)


async def _cancel_or_error(api: DialNexaClient) -> CancelResult | DialNexaError:
    """The cancel's result, or the client's own error; anything else propagates and fails the test."""
    try:
        return await api.cancel("wf_1")
    except DialNexaError as error:
        return error
