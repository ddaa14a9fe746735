"""Inbound and outbound events (CloudEvents 1.0, structured JSON mode).

`parse(body, content_type, max_bytes)` turns a message body into a frozen event model or raises
`InvalidEvent` with a short reason that is safe to put in a header: it never echoes input values,
so a phone number cannot leak through an error text.
"""

from __future__ import annotations

import hashlib
import re
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

import orjson
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    StringConstraints,
    TypeAdapter,
    ValidationError,
    field_validator,
)

CAMPAIGN_ENDED = "campaign-ended"
COMPLAINT_RECEIVED = "complaint-received"
WORKFLOW_CANCELLED = "workflow-cancelled"
EVENT_TYPES = (CAMPAIGN_ENDED, COMPLAINT_RECEIVED)

WORKFLOW_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_-]{0,127}$"
MAX_WORKFLOWS = 1000
_NAMESPACE_URL = uuid.NAMESPACE_URL.bytes
# Input values are echoed in error texts only when they have these shapes (no digits-first runs,
# so a phone number is never quoted back).
TYPE_NAME_SHAPE = re.compile(r"[A-Za-z][A-Za-z0-9._-]{0,63}")
MEDIA_TYPE_SHAPE = re.compile(r"[a-z][a-z0-9.+-]{0,40}/[a-z0-9][a-z0-9.+-]{0,40}")
ACCEPTED_CONTENT_TYPES = frozenset({"application/json", "application/cloudevents+json"})

WorkflowId = Annotated[str, StringConstraints(pattern=WORKFLOW_ID_PATTERN)]
NonEmpty = Annotated[str, StringConstraints(min_length=1, max_length=1024)]


class InvalidEvent(ValueError):
    """The message cannot be processed as it is; the text is a short, value-free reason."""


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore")


class _WorkflowsData(_Model):
    workflow_ids: Annotated[tuple[WorkflowId, ...], Field(min_length=1, max_length=MAX_WORKFLOWS)]

    @field_validator("workflow_ids")
    @classmethod
    def _dedupe(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        """Drop repeated ids, keeping the first occurrence (so indexes stay stable)."""
        return tuple(dict.fromkeys(value))


class CampaignEndedData(_WorkflowsData):
    campaign_id: NonEmpty
    reason: str | None = None


class ComplaintReceivedData(_WorkflowsData):
    complaint_id: NonEmpty
    lead_id: str | None = None
    campaign_id: str | None = None
    # Personal data: kept secret so no repr, log line or error text can show it.
    phone_number: SecretStr | None = None


class _Envelope(_Model):
    specversion: Literal["1.0"]
    id: Annotated[str, StringConstraints(min_length=1, max_length=256)]
    source: NonEmpty
    time: datetime | None = None


class CampaignEnded(_Envelope):
    type: Literal["campaign-ended"]
    data: CampaignEndedData


class ComplaintReceived(_Envelope):
    type: Literal["complaint-received"]
    data: ComplaintReceivedData


InboundEvent = CampaignEnded | ComplaintReceived


# --- the outbound event, as a schema (docs/asyncapi.yaml is generated from these models) -----------
# `workflow_cancelled()` builds the body directly for speed; tests validate its output against
# these models, which forbid unknown fields, so the two cannot drift apart.


class _Strict(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Trigger(_Strict):
    """What caused the cancellation: the input event."""

    event_id: Annotated[str, StringConstraints(min_length=1, max_length=256)]
    event_type: Literal["campaign-ended", "complaint-received"]
    campaign_id: str | None = None
    complaint_id: str | None = None


class WorkflowCancelledData(_Strict):
    """`data` of a workflow-cancelled event."""

    workflow_id: WorkflowId
    outcome: Literal["cancelled", "already_terminal"] = Field(
        description="cancelled: this call cancelled it; already_terminal: DialNexa answered 409"
    )
    status: str | None = Field(default=None, description="the status DialNexa reported, when known")
    trigger: Trigger


class WorkflowCancelled(_Strict):
    """A DialNexa workflow is now terminal. `id` is the same for every redelivery of one trigger."""

    specversion: Literal["1.0"]
    id: Annotated[str, Field(description="UUIDv5 (URL namespace) of '{workflow_id}/{trigger event id}'")]
    source: NonEmpty
    type: Literal["workflow-cancelled"]
    subject: WorkflowId
    time: datetime = Field(description="when DialNexa confirmed the cancellation")
    datacontenttype: Literal["application/json"]
    data: WorkflowCancelledData
    traceparent: str | None = Field(
        default=None,
        description="CloudEvents distributed tracing: the W3C trace context of the event that started it",
    )
    tracestate: str | None = Field(
        default=None, description="CloudEvents distributed tracing: its tracestate"
    )


_INBOUND: TypeAdapter[InboundEvent] = TypeAdapter(Annotated[InboundEvent, Field(discriminator="type")])


def parse(body: bytes, content_type: str | None, max_bytes: int) -> InboundEvent:
    """Parse one message body; raise `InvalidEvent` with a reason for anything unusable."""
    if len(body) > max_bytes:
        raise InvalidEvent(f"body is {len(body)} bytes, over the {max_bytes}-byte limit")
    media_type = (content_type or "").split(";", 1)[0].strip().lower()
    if media_type and media_type not in ACCEPTED_CONTENT_TYPES:
        shown = repr(media_type) if MEDIA_TYPE_SHAPE.fullmatch(media_type) else "(value not shown)"
        raise InvalidEvent(f"content type {shown} is not JSON")
    try:
        body.decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidEvent("body is not UTF-8") from None
    try:
        return _INBOUND.validate_json(body)  # pydantic-core's own JSON parser: one pass, no dicts
    except ValidationError as error:
        raise InvalidEvent(_reason(error)) from None


def _reason(error: ValidationError) -> str:
    """The first problem as a short reason; schema problems listed by field."""
    first = error.errors(include_input=False, include_url=False)[0]
    kind = first["type"]
    if kind == "json_invalid":
        return "body is not JSON"
    if kind == "dict_type" and not first["loc"]:
        return "body is not a JSON object"
    if kind == "union_tag_invalid":
        tag = str(first.get("ctx", {}).get("tag", ""))
        # Quoted only when it looks like a type name, so no personal data can ride along.
        return (
            f"unknown event type {tag!r}"
            if TYPE_NAME_SHAPE.fullmatch(tag)
            else "unknown event type (value not shown)"
        )
    if kind == "union_tag_not_found":
        return "schema: type: Field required"
    return describe_validation(error)


def describe_validation(error: ValidationError, limit: int = 3) -> str:
    """`field.path: message` for the first few problems, without the offending values."""
    problems = error.errors(include_input=False, include_url=False, include_context=False)
    parts = []
    for item in problems[:limit]:
        # The discriminator adds the type name as the first path element: it is not a field.
        loc = [str(p) for p in item["loc"] if p not in EVENT_TYPES]
        parts.append(f"{'.'.join(loc) or 'body'}: {item['msg']}")
    more = len(problems) - limit
    return "schema: " + "; ".join(parts) + (f" (+{more} more)" if more > 0 else "")


def peek_type(body: bytes) -> str:
    """A bounded label for metrics of a message that may not parse: a known type or `unknown`."""
    for event_type in EVENT_TYPES:
        if f'"{event_type}"'.encode() in body:
            return event_type
    return "unknown"


def cancelled_event_id(workflow_id: str, trigger_id: str) -> str:
    """Deterministic id of the workflow-cancelled event: UUIDv5 (URL namespace) of `wf/trigger`.

    The same bytes as `uuid.uuid5`, built without the UUID object, which cost more than the hash.
    """
    digest = bytearray(hashlib.sha1(_NAMESPACE_URL + f"{workflow_id}/{trigger_id}".encode()).digest()[:16])  # noqa: S324  # UUIDv5 is defined on SHA-1
    digest[6] = (digest[6] & 0x0F) | 0x50  # version 5
    digest[8] = (digest[8] & 0x3F) | 0x80  # RFC 4122 variant
    h = digest.hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def trigger_of(event: InboundEvent) -> dict[str, str]:
    """The `trigger` object of an outbound event: what caused the cancellation."""
    trigger = {"event_id": event.id, "event_type": event.type}
    if isinstance(event, CampaignEnded):
        trigger["campaign_id"] = event.data.campaign_id
    else:
        trigger["complaint_id"] = event.data.complaint_id
        if event.data.campaign_id:
            trigger["campaign_id"] = event.data.campaign_id
    return trigger


def workflow_cancelled(
    *,
    workflow_id: str,
    outcome: Literal["cancelled", "already_terminal"],
    status: str | None,
    trigger: dict[str, str],
    source: str,
    confirmed_at: datetime,
    extensions: dict[str, str] | None = None,
) -> tuple[str, bytes]:
    """The id and body of one `workflow-cancelled` event; `extensions` are further attributes
    (the trace context of the event that started it)."""
    event_id = cancelled_event_id(workflow_id, trigger["event_id"])
    data: dict[str, Any] = {"workflow_id": workflow_id, "outcome": outcome}
    if status is not None:
        data["status"] = status
    data["trigger"] = trigger
    envelope = {
        "specversion": "1.0",
        "id": event_id,
        "source": source,
        "type": WORKFLOW_CANCELLED,
        "subject": workflow_id,
        "time": confirmed_at,  # RFC 3339 by orjson, UTC as "Z"
        "datacontenttype": "application/json",
        "data": data,
    }
    if extensions:
        envelope.update(extensions)
    return event_id, orjson.dumps(envelope, option=orjson.OPT_UTC_Z)


def cloudevent(
    event_type: str,
    workflow_ids: Sequence[str],
    *,
    event_id: str | None = None,
    source: str = "urn:crm",
    time: datetime | str | None = None,
    campaign_id: str | None = None,
    complaint_id: str | None = None,
    lead_id: str | None = None,
    reason: str | None = None,
    **data: Any,
) -> dict[str, Any]:
    """A `campaign-ended` or `complaint-received` CloudEvent as a JSON object, not yet validated:
    the one way the `publish` command, the tests, the benchmarks and the drills build one.

    `time` defaults to now (a `datetime` is written in RFC 3339, a string as given); `data` adds
    further data fields (a complaint's `phone_number`, say). Fields left `None` are left out.
    """
    when = time if time is not None else datetime.now(UTC)
    fields: dict[str, Any] = {
        "campaign_id": campaign_id,
        "complaint_id": complaint_id,
        "workflow_ids": list(workflow_ids),
        "lead_id": lead_id,
        "reason": reason,
        **data,
    }
    return {
        "specversion": "1.0",
        "id": event_id or str(uuid.uuid4()),
        "source": source,
        "type": event_type,
        "time": when.isoformat(timespec="milliseconds").replace("+00:00", "Z")
        if isinstance(when, datetime)
        else when,
        "datacontenttype": "application/json",
        "data": {name: value for name, value in fields.items() if value is not None},
    }
