"""The AsyncAPI 3 description of every channel and message, built from the pydantic models.

`python scripts/asyncapi.py` writes it to docs/asyncapi.yaml (`--check`: exit 1 if the file is out
of date); a test fails when the file and the models (or the default names) drift apart. Names are
the defaults of the settings. Docs tooling: nothing in the service imports it.
"""

from __future__ import annotations

import argparse
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from service.config import CommonSettings
from service.core.events import CampaignEnded, ComplaintReceived, WorkflowCancelled
from service.ops.dlq import REASONS
from service.retry import (
    HEADER_ATTEMPTS,
    HEADER_DEAD_LETTERED,
    HEADER_DONE,
    HEADER_ERROR,
    HEADER_FAILED,
    HEADER_REASON,
    HEADER_REPLAYED_AT,
    HEADER_REPLAYS,
    HEADER_SOURCE_QUEUE,
)

CLOUDEVENTS_JSON = "application/cloudevents+json"
_BINDING = "0.3.0"
_MODELS: tuple[type[BaseModel], ...] = (CampaignEnded, ComplaintReceived, WorkflowCancelled)


def schemas() -> dict[str, Any]:
    """JSON schemas of every event model, by name, referring to each other under components."""
    _, top = models_json_schema(
        [(model, "validation") for model in _MODELS], ref_template="#/components/schemas/{model}"
    )
    return dict(sorted(top["$defs"].items()))


def _ref(kind: str, name: str) -> dict[str, str]:
    """A reference to a component."""
    return {"$ref": f"#/components/{kind}/{name}"}


def _exchange_channel(exchange: str, key: str, message: str, text: str) -> dict[str, Any]:
    return {
        "address": key,
        "title": f"{exchange} / {key}",
        "description": text,
        "messages": {message: _ref("messages", message)},
        "bindings": {
            "amqp": {
                "is": "routingKey",
                "exchange": {"name": exchange, "type": "topic", "durable": True, "autoDelete": False},
                "bindingVersion": _BINDING,
            }
        },
    }


def _dead_letter_headers() -> dict[str, Any]:
    return {
        "type": "object",
        "description": "Set on every copy the service dead-letters. Replayed messages drop them and "
        f"carry {HEADER_REPLAYED_AT} and {HEADER_REPLAYS} instead.",
        "properties": {
            HEADER_REASON: {
                "type": "string",
                "enum": list(REASONS[:3]),
                "description": "invalid: never valid input; permanent: DialNexa refused for good; "
                "exhausted: transient failures outlasted every retry. Messages the broker itself "
                "dead-letters at the input queues' delivery limit carry x-death instead.",
            },
            HEADER_ERROR: {"type": "string", "maxLength": 200, "description": "a short reason, no data"},
            HEADER_ATTEMPTS: {"type": "integer", "minimum": 1, "description": "deliveries tried"},
            HEADER_SOURCE_QUEUE: {"type": "string", "description": "the input queue it was taken from"},
            HEADER_DEAD_LETTERED: {"type": "integer", "description": "when, in Unix milliseconds"},
            HEADER_FAILED: {
                "type": "string",
                "pattern": "^[0-9]+:[0-9a-f]+$",
                "description": "permanent and exhausted only: the workflows that failed, as "
                "`<count of ids>:<hex bitmap of their indexes>`; `dlq replay` calls only these",
            },
            HEADER_DONE: {
                "type": "string",
                "pattern": "^[0-9]+:[0-9a-f]+$",
                "description": "permanent and exhausted only: the workflows already settled, same form",
            },
        },
        "required": [HEADER_REASON, HEADER_ERROR, HEADER_ATTEMPTS],
    }


def _replay_headers() -> dict[str, Any]:
    return {
        "type": "object",
        "description": "Present when `workflow-canceller dlq replay` put the message back.",
        "properties": {
            HEADER_REPLAYED_AT: {"type": "string", "format": "date-time"},
            HEADER_REPLAYS: {"type": "integer", "minimum": 1, "description": "times replayed"},
        },
    }


def _message(name: str, title: str, schema: str, summary: str, **extra: Any) -> dict[str, Any]:
    return {
        "name": name,
        "title": title,
        "summary": summary,
        "contentType": CLOUDEVENTS_JSON,
        "payload": _ref("schemas", schema),
        **extra,
    }


def build(settings: CommonSettings | None = None) -> dict[str, Any]:
    """The whole AsyncAPI document as plain data."""
    s = settings or CommonSettings.model_construct()
    persistent = {"amqp": {"deliveryMode": 2, "bindingVersion": _BINDING}}
    return {
        "asyncapi": "3.0.0",
        "info": {
            "title": "workflow-canceller",
            "version": metadata.version("workflow-canceller"),
            "description": "Cancels every DialNexa workflow a CRM event names and reports each one "
            "as a workflow-cancelled event. At-least-once: an input message is acked only after "
            "every outcome was published and confirmed. Names are the defaults; each is configurable "
            "(CANCELLER_* variables).",
        },
        "defaultContentType": CLOUDEVENTS_JSON,
        "servers": {
            "broker": {
                "host": "rabbitmq:5672",
                "protocol": "amqp",
                "protocolVersion": "0-9-1",
                "description": "RabbitMQ (amqps:// for TLS); CANCELLER_AMQP_URL",
            }
        },
        "channels": {
            "campaignEnded": _exchange_channel(
                s.input_exchange,
                s.campaign_routing_key,
                "campaignEnded",
                f"Consumed through the quorum queue {s.campaign_queue}.",
            ),
            "complaintReceived": _exchange_channel(
                s.input_exchange,
                s.complaint_routing_key,
                "complaintReceived",
                f"Consumed through the quorum queue {s.complaint_queue}, with reserved capacity.",
            ),
            "workflowCancelled": _exchange_channel(
                s.output_exchange,
                s.output_routing_key,
                "workflowCancelled",
                "One event per workflow now terminal; persistent, mandatory, publisher-confirmed.",
            ),
            "deadLetters": {
                "address": s.dead_letter_queue,
                "title": s.dead_letter_queue,
                "description": f"Quorum queue behind the fanout exchange {s.dead_letter_exchange}: "
                "input messages that cannot be processed, body unchanged. Operated with "
                "`workflow-canceller dlq list|replay|purge`.",
                "messages": {"deadLettered": _ref("messages", "deadLettered")},
                "bindings": {
                    "amqp": {
                        "is": "queue",
                        "queue": {
                            "name": s.dead_letter_queue,
                            "durable": True,
                            "exclusive": False,
                            "autoDelete": False,
                        },
                        "bindingVersion": _BINDING,
                    }
                },
            },
        },
        "operations": {
            "consumeCampaignEnded": {
                "action": "receive",
                "channel": {"$ref": "#/channels/campaignEnded"},
                "summary": "Cancel every workflow of an ended campaign.",
                "bindings": {"amqp": {"ack": True, "bindingVersion": _BINDING}},
            },
            "consumeComplaintReceived": {
                "action": "receive",
                "channel": {"$ref": "#/channels/complaintReceived"},
                "summary": "Cancel the workflows a complaint names, within seconds.",
                "bindings": {"amqp": {"ack": True, "bindingVersion": _BINDING}},
            },
            "publishWorkflowCancelled": {
                "action": "send",
                "channel": {"$ref": "#/channels/workflowCancelled"},
                "summary": "Report one workflow as cancelled (or already terminal).",
                "bindings": {
                    "amqp": {"deliveryMode": 2, "mandatory": True, "ack": True, "bindingVersion": _BINDING}
                },
            },
            "deadLetter": {
                "action": "send",
                "channel": {"$ref": "#/channels/deadLetters"},
                "summary": "Park a message that cannot be processed, with the reason in headers.",
                "bindings": persistent,
            },
        },
        "components": {
            "messages": {
                "campaignEnded": _message(
                    "campaign-ended",
                    "Campaign ended",
                    "CampaignEnded",
                    "A campaign ended: cancel its workflows.",
                    headers=_replay_headers(),
                ),
                "complaintReceived": _message(
                    "complaint-received",
                    "Complaint received",
                    "ComplaintReceived",
                    "A lead complained: cancel the named workflows now. phone_number is personal "
                    "data and never logged.",
                    headers=_replay_headers(),
                ),
                "workflowCancelled": _message(
                    "workflow-cancelled",
                    "Workflow cancelled",
                    "WorkflowCancelled",
                    "A workflow is terminal. Consumers de-duplicate on the message id (= event id).",
                ),
                "deadLettered": {
                    "name": "dead-lettered",
                    "title": "Dead-lettered input",
                    "summary": "An input message, body and properties unchanged, with the reason.",
                    "headers": _dead_letter_headers(),
                    "payload": {
                        "description": "The original body as received: usually one of the input "
                        "events, but for reason=invalid it may be anything.",
                    },
                },
            },
            "schemas": schemas(),
        },
    }


TARGET = Path(__file__).resolve().parent.parent / "docs" / "asyncapi.yaml"
HEADER = "# Generated by `python scripts/asyncapi.py` from the pydantic models.\n"


def render() -> str:
    return HEADER + yaml.safe_dump(build(), sort_keys=False, allow_unicode=True, width=100)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--check", action="store_true", help="exit 1 if the file is out of date")
    args = parser.parse_args()
    text = render()
    if args.check:
        if TARGET.read_text() != text:
            print(f"{TARGET} is out of date: run python scripts/asyncapi.py", file=sys.stderr)
            return 1
        return 0
    TARGET.write_text(text)
    print(f"wrote {TARGET}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
