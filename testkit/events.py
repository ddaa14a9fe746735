"""Valid CloudEvents as the CRM sends them, built by the product's own factory
(`service.core.events.cloudevent`), so the tests, benchmarks and drills cannot drift from it."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import orjson

from service.core.events import CAMPAIGN_ENDED, COMPLAINT_RECEIVED, cloudevent


def campaign(ids: Sequence[str], event_id: str | None = None, **data: Any) -> dict[str, Any]:
    """A valid campaign-ended event naming `ids`; `data` adds or replaces data fields (None drops one)."""
    fields: dict[str, Any] = {"campaign_id": "cmp_1", "reason": "ended", **data}
    return cloudevent(CAMPAIGN_ENDED, ids, event_id=event_id, **fields)


def complaint(
    ids: Sequence[str], event_id: str | None = None, phone: str | None = "+15555550123", **data: Any
) -> dict[str, Any]:
    """A valid complaint-received event naming `ids`, with a phone number (personal data) unless
    `phone` is None; `data` adds or replaces data fields (None drops one)."""
    fields: dict[str, Any] = {
        "complaint_id": "cpl_1",
        "lead_id": "lead_1",
        "campaign_id": "cmp_1",
        "phone_number": phone,
        **data,
    }
    return cloudevent(COMPLAINT_RECEIVED, ids, event_id=event_id, **fields)


def encoded(event: dict[str, Any]) -> bytes:
    """An event as a message body (compact JSON)."""
    return orjson.dumps(event)
