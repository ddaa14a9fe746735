"""The CloudEvents HTTP binding, without I/O: which mode a request is in, and the structured JSON
form the worker reads (structured mode passed on byte for byte, binary mode's `ce-*` headers and
data rebuilt into one JSON object)."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any, Literal
from urllib.parse import unquote

import orjson

from ..core.events import MEDIA_TYPE_SHAPE, InvalidEvent

STRUCTURED = "application/cloudevents+json"
JSON = "application/json"
BATCH = "application/cloudevents-batch+json"
Mode = Literal["structured", "binary"]
_ATTRIBUTE_NAME = re.compile(r"[a-z0-9]{1,64}")
_NOT_HEADER_ATTRIBUTES = frozenset({"data", "data_base64", "datacontenttype"})


class UnsupportedMediaType(Exception):
    """The request's content type is not one this endpoint takes; the text says which are."""


def mode_of(content_type: str | None, headers: Mapping[str, str]) -> Mode:
    """Structured or binary mode, from the media type (and a `ce-specversion` header for JSON)."""
    media_type = (content_type or "").split(";", 1)[0].strip().lower()
    if media_type == STRUCTURED:
        return "structured"
    if media_type == JSON:
        return "binary" if "ce-specversion" in headers else "structured"
    if media_type == BATCH:
        raise UnsupportedMediaType("batched CloudEvents are not accepted: send one event per request")
    if not media_type:
        shown = "missing"
    else:  # echoed only when shaped like a media type: the detail goes back to the sender and logs
        shown = repr(media_type) if MEDIA_TYPE_SHAPE.fullmatch(media_type) else "(value not shown)"
    raise UnsupportedMediaType(f"content type {shown}: send {STRUCTURED} or {JSON}")


def structured_body(mode: Mode, body: bytes, headers: Iterable[tuple[str, str]]) -> bytes:
    """The event in structured JSON form: the body itself, or rebuilt from a binary-mode request."""
    if mode == "structured":
        return body
    return from_binary(headers, body)


def from_binary(headers: Iterable[tuple[str, str]], body: bytes) -> bytes:
    """One structured event from `ce-*` headers (percent-decoded) and a JSON body as its data.

    Raises `InvalidEvent` with a value-free reason; the result still goes through `events.parse`.
    """
    envelope: dict[str, Any] = {}
    for name, value in headers:
        lower = name.lower()
        if not lower.startswith("ce-"):
            continue
        attribute = lower.removeprefix("ce-")
        if not _ATTRIBUTE_NAME.fullmatch(attribute) or attribute in _NOT_HEADER_ATTRIBUTES:
            raise InvalidEvent(f"binary mode: header {name[:70]!r} is not a CloudEvents attribute")
        if attribute in envelope:
            raise InvalidEvent(f"binary mode: header {name[:70]!r} appears more than once")
        envelope[attribute] = _percent_decoded(name, value)
    try:
        envelope["data"] = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise InvalidEvent("binary mode: the body (the event's data) is not JSON") from None
    envelope["datacontenttype"] = JSON
    return orjson.dumps(envelope)


def _percent_decoded(name: str, value: str) -> str:
    """Header values are percent-encoded UTF-8 (CloudEvents HTTP binding, 3.1.3.2)."""
    try:
        return unquote(value, errors="strict")
    except UnicodeDecodeError:
        raise InvalidEvent(f"binary mode: header {name[:70]!r} is not percent-encoded UTF-8") from None
