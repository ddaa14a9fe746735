"""Parsing inbound events and building outbound ones."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime

import pytest

from service.core.events import (
    CampaignEnded,
    ComplaintReceived,
    InvalidEvent,
    cancelled_event_id,
    parse,
    trigger_of,
    workflow_cancelled,
)
from tests.support import campaign, complaint

LIMIT = 1 << 20


def body(event: dict[str, object]) -> bytes:
    """The JSON bytes of an event."""
    return json.dumps(event).encode()


@pytest.mark.parametrize(
    "content_type", [None, "", "application/json", "application/cloudevents+json; charset=utf-8"]
)
def test_both_content_types_and_none_are_accepted(content_type: str | None) -> None:
    """JSON, CloudEvents JSON (with parameters) or no content type at all."""
    assert isinstance(parse(body(campaign(["wf_1"])), content_type, LIMIT), CampaignEnded)


def test_complaint_keeps_phone_number_secret() -> None:
    """The phone number is parsed but never shown by repr or str."""
    event = parse(body(complaint(["wf_1"], phone="+15550001111")), None, LIMIT)
    assert isinstance(event, ComplaintReceived)
    assert "+15550001111" not in repr(event) and "+15550001111" not in str(event)
    assert event.data.phone_number is not None
    assert event.data.phone_number.get_secret_value() == "+15550001111"


def test_type_comes_from_the_body_and_extras_are_ignored() -> None:
    """Unknown attributes are ignored; `time` is optional and parsed."""
    raw = {**campaign(["wf_a", "wfl_b", "workflow_c"]), "extension": 1, "time": "2026-01-02T03:04:05+00:00"}
    event = parse(body(raw), None, LIMIT)
    assert event.type == "campaign-ended"
    assert event.time == datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    assert event.data.workflow_ids == ("wf_a", "wfl_b", "workflow_c")


def test_repeated_workflow_ids_are_dropped_in_order() -> None:
    """A workflow named twice is cancelled once; the order of first appearance is kept."""
    event = parse(body(campaign(["wf_b", "wf_a", "wf_b"])), None, LIMIT)
    assert event.data.workflow_ids == ("wf_b", "wf_a")


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b"\xff\xfe", "not UTF-8"),
        (b"nope", "not JSON"),
        (b'"string"', "not a JSON object"),
        (body({**campaign(["wf_1"]), "type": "other"}), "unknown event type 'other'"),
        (body({**campaign(["wf_1"]), "id": ""}), "id"),
        (body({**campaign(["wf_1"]), "id": "x" * 257}), "id"),
        (body({**campaign(["wf_1"]), "source": ""}), "source"),
        (body({**campaign(["wf_1"]), "time": "yesterday"}), "time"),
        (body({**campaign(["wf_1"]), "data": {"workflow_ids": ["wf_1"]}}), "campaign_id"),
        (body(campaign(["wf 1"])), "workflow_ids"),
        (body(campaign(["_wf"])), "workflow_ids"),
        (body(campaign(["w" * 129])), "workflow_ids"),
        (body(campaign(["wf/../x"])), "workflow_ids"),
        (body(complaint([])), "workflow_ids"),
        (body({k: v for k, v in campaign(["wf_1"]).items() if k != "type"}), "type"),
    ],
)
def test_invalid_input_has_a_reason(raw: bytes, reason: str) -> None:
    """Each kind of invalid input raises InvalidEvent naming what is wrong."""
    with pytest.raises(InvalidEvent, match=None) as caught:
        parse(raw, "application/json", LIMIT)
    assert reason in str(caught.value)


def test_size_limit_checked_before_parsing() -> None:
    """A body over the limit is refused by size alone."""
    with pytest.raises(InvalidEvent, match="over the 10-byte limit"):
        parse(b"{" + b" " * 20 + b"}", None, 10)


def test_non_json_content_type_is_refused() -> None:
    """text/plain is not accepted even if the body is JSON."""
    with pytest.raises(InvalidEvent, match="content type"):
        parse(body(campaign(["wf_1"])), "text/plain", LIMIT)


def test_error_text_never_echoes_the_phone_number() -> None:
    """A schema error in a complaint does not quote its personal data."""
    raw = complaint(["bad id"], phone="+15559998888")
    with pytest.raises(InvalidEvent) as caught:
        parse(body(raw), None, LIMIT)
    assert "+15559998888" not in str(caught.value)


def test_cancelled_event_id_is_uuid5_of_workflow_and_trigger() -> None:
    """Deterministic: the same workflow and trigger give the same id; another trigger another one."""
    first = cancelled_event_id("wf_1", "evt_1")
    assert first == str(uuid.uuid5(uuid.NAMESPACE_URL, "wf_1/evt_1"))
    assert first == cancelled_event_id("wf_1", "evt_1") != cancelled_event_id("wf_1", "evt_2")


def test_workflow_cancelled_body() -> None:
    """The outbound event has every field of the contract."""
    event = parse(body(complaint(["wf_1"])), None, LIMIT)
    at = datetime(2026, 11, 29, 12, 0, tzinfo=UTC)
    event_id, out_body = workflow_cancelled(
        workflow_id="wf_1",
        outcome="already_terminal",
        status="completed",
        trigger=trigger_of(event),
        source="urn:test",
        confirmed_at=at,
    )
    out = json.loads(out_body)
    assert event_id == out["id"]
    assert out == {
        "specversion": "1.0",
        "id": cancelled_event_id("wf_1", event.id),
        "source": "urn:test",
        "type": "workflow-cancelled",
        "subject": "wf_1",
        "time": "2026-11-29T12:00:00Z",
        "datacontenttype": "application/json",
        "data": {
            "workflow_id": "wf_1",
            "outcome": "already_terminal",
            "status": "completed",
            "trigger": {
                "event_id": event.id,
                "event_type": "complaint-received",
                "complaint_id": "cpl_1",
                "campaign_id": "cmp_1",
            },
        },
    }


def test_cancelled_event_id_matches_the_standard_library() -> None:
    """The fast UUIDv5 is byte for byte uuid.uuid5 over many odd inputs."""
    import random
    import string

    rng = random.Random(7)
    for _ in range(500):
        wf = "".join(rng.choices(string.ascii_letters + "_-", k=rng.randint(1, 128)))
        trigger = "".join(rng.choices(string.printable + "éü✓", k=rng.randint(1, 256)))
        assert cancelled_event_id(wf, trigger) == str(uuid.uuid5(uuid.NAMESPACE_URL, f"{wf}/{trigger}"))


def test_error_texts_quote_only_harmless_shapes() -> None:
    """An unknown type or content type is quoted back only when it cannot be a phone number."""
    bad_type = json.dumps({**campaign(["wf_1"]), "type": "+15555550123"}).encode()
    with pytest.raises(InvalidEvent) as caught:
        parse(bad_type, None, 10_000)
    assert str(caught.value) == "unknown event type (value not shown)"
    with pytest.raises(InvalidEvent) as caught:
        parse(b"{}", "+15555550123", 10_000)
    assert "5555550123" not in str(caught.value)
    with pytest.raises(InvalidEvent, match="content type 'text/plain' is not JSON"):
        parse(b"{}", "text/plain", 10_000)
