"""docs/openapi.yaml: valid OpenAPI 3.1, naming exactly the ingress's routes, true to its answers.

The routes come from the app `ingress.build_app` makes (the one `ingress.serve` runs); the answers
come from that app behind a real HTTP server, its broker link connected to the test broker, and
are checked against the document with `openapi-core` (status, content type, headers, body schema).
"""

from __future__ import annotations

import asyncio
import base64
import copy
import json
import time
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from openapi_core import Config, OpenAPI
from openapi_core.exceptions import OpenAPIError
from openapi_core.testing import MockRequest, MockResponse
from openapi_spec_validator import OpenAPIV31SpecValidator
from openapi_spec_validator.validation.exceptions import OpenAPIValidationError
from prometheus_client import CollectorRegistry
from standardwebhooks import Webhook

from service import ingress
from service.ingress import signing
from tests.support import BrokerProbe, campaign, complaint, wait_until, wf_ids

pytestmark = pytest.mark.timeout(30)

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "openapi.yaml"
ASYNCAPI = ROOT / "docs" / "asyncapi.yaml"
SECRET = "whsec_" + base64.b64encode(b"openapi-test-secret-32-bytes-abc").decode()
OTHER_SECRET = "whsec_" + base64.b64encode(b"not-a-secret-the-ingress-knows!!").decode()
MAX_BODY = 4096
METHODS = {"get", "put", "post", "delete", "options", "head", "patch", "trace"}
EVENT_SCHEMAS = ("CampaignEnded", "CampaignEndedData", "ComplaintReceived", "ComplaintReceivedData")


@pytest.fixture(scope="module")
def document() -> dict[str, Any]:
    """The committed document."""
    return dict(yaml.safe_load(DOC.read_text()))


@pytest.fixture(scope="module")
def spec() -> OpenAPI:
    """The committed document, loaded by openapi-core (which validates it on load); the JSON media
    types beyond application/json are read as JSON."""
    as_json = dict.fromkeys(("application/problem+json", "application/cloudevents+json"), json.loads)
    return OpenAPI.from_file_path(str(DOC), config=Config(extra_media_type_deserializers=as_json))


def _signed(body: bytes, secret: str = SECRET) -> dict[str, str]:
    """Standard Webhooks headers for `body`, made by the reference package."""
    webhook_id = f"msg_{uuid.uuid4().hex}"
    when = datetime.fromtimestamp(int(time.time()), UTC)
    return {
        "webhook-id": webhook_id,
        "webhook-timestamp": str(int(when.timestamp())),
        "webhook-signature": Webhook(secret).sign(webhook_id, when, body.decode()),
    }


def _structured(event: dict[str, Any], secret: str = SECRET) -> tuple[bytes, dict[str, str]]:
    body = json.dumps(event).encode()
    return body, {"Content-Type": "application/cloudevents+json", **_signed(body, secret)}


def _settings(**overrides: Any) -> ingress.IngressSettings:
    values: dict[str, Any] = {
        "webhook_secrets": (SECRET,),
        "max_body_bytes": MAX_BODY,
        "publish_timeout_s": 5.0,
        "reconnect_initial_s": 0.1,
        "reconnect_max_s": 0.3,
        **overrides,
    }
    return ingress.IngressSettings(_env_file=None, **values)


def _app(settings: ingress.IngressSettings) -> tuple[web.Application, ingress.BrokerLink]:
    """The app exactly as `ingress.serve` builds it (its broker link not started yet)."""
    registry = CollectorRegistry()
    metrics = ingress.IngressMetrics.build(registry)
    link = ingress.BrokerLink(settings, metrics)
    handler = ingress.Ingress(settings, signing.Verifier(settings.webhook_secrets), link, metrics)
    return ingress.build_app(handler, link, registry), link


@pytest.fixture
async def offline() -> AsyncIterator[TestClient[web.Request, web.Application]]:
    """A client of an ingress whose broker link never connects."""
    app, _ = _app(_settings())
    async with TestClient(TestServer(app)) as client:
        yield client


@pytest.fixture
async def online(
    amqp_url: str, names: dict[str, str], broker: BrokerProbe
) -> AsyncIterator[TestClient[web.Request, web.Application]]:
    """A client of an ingress connected to the test broker, with a queue bound for every event."""
    queue = await broker.channel.declare_queue(exclusive=True, auto_delete=True)
    await queue.bind(names["input_exchange"], "#")
    app, link = _app(_settings(amqp_url=amqp_url, input_exchange=names["input_exchange"]))
    stop = asyncio.Event()
    task = asyncio.create_task(link.run(stop))
    try:
        await wait_until(lambda: link.ready, what="the ingress's broker link")
        async with TestClient(TestServer(app)) as client:
            yield client
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)


async def _exchange(
    spec: OpenAPI,
    client: TestClient[web.Request, web.Application],
    method: str,
    path: str,
    body: bytes = b"",
    headers: dict[str, str] | None = None,
) -> tuple[int, bytes, MockRequest]:
    """Send one request; check the answer against the document; return (status, body, request)."""
    headers = headers or {}
    async with client.request(method, path, data=body, headers=headers) as answer:
        data = await answer.read()
        answer_headers = dict(answer.headers)
        status = answer.status
    request = MockRequest(
        "http://localhost:8081",
        method.lower(),
        path,
        headers=headers,
        data=body,
        content_type=headers.get("Content-Type", "application/json"),
    )
    response = MockResponse(
        data,
        status_code=status,
        headers=answer_headers,
        content_type=answer_headers.get("Content-Type", ""),
    )
    spec.validate_response(request, response)  # raises when the answer is not what is documented
    return status, data, request


# ------------------------------------------------------------------------------------------------
# the document itself


def test_document_is_valid_openapi_3_1(document: dict[str, Any]) -> None:
    """The document passes the OpenAPI 3.1 schema, and the same validator rejects a broken copy."""
    OpenAPIV31SpecValidator(document).validate()

    broken = copy.deepcopy(document)
    del broken["paths"]["/v1/events"]["post"]["responses"]["202"]["description"]  # required field
    with pytest.raises(OpenAPIValidationError):
        OpenAPIV31SpecValidator(broken).validate()


def test_event_schemas_are_the_asyncapi_ones(document: dict[str, Any]) -> None:
    """The inbound event schemas are identical to docs/asyncapi.yaml's, which the models generate."""
    asyncapi = yaml.safe_load(ASYNCAPI.read_text())["components"]["schemas"]
    for name in EVENT_SCHEMAS:
        assert document["components"]["schemas"][name] == asyncapi[name], name


def test_every_route_of_the_app_is_documented_and_nothing_else(document: dict[str, Any]) -> None:
    """The (path, method) pairs the aiohttp app registers are exactly the document's operations."""
    app, _ = _app(_settings())
    served = {
        (route.resource.canonical, route.method.lower())
        for route in app.router.routes()
        if route.resource is not None
    }
    documented = {
        (path, method) for path, item in document["paths"].items() for method in item if method in METHODS
    }
    assert served == documented
    assert ("/v1/events", "post") in served and ("/healthz", "head") in served


# ------------------------------------------------------------------------------------------------
# real answers against the document


@pytest.mark.broker
async def test_accepted_and_refused_events_answer_as_documented(
    spec: OpenAPI, online: TestClient[web.Request, web.Application]
) -> None:
    """Valid events (both modes, and a replay) get the documented 202; bad ones the documented problem."""
    event = campaign(wf_ids(1))
    body, headers = _structured(event)
    status, answer, request = await _exchange(spec, online, "POST", "/v1/events", body, headers)
    assert (status, json.loads(answer)) == (202, {"status": "accepted", "event_id": event["id"]})
    spec.validate_request(request)  # the documented request schema takes a real valid event

    status, answer, _ = await _exchange(spec, online, "POST", "/v1/events", body, headers)
    assert (status, json.loads(answer)["status"]) == (202, "duplicate")

    data = json.dumps(complaint(wf_ids(1))["data"]).encode()
    binary = {
        "Content-Type": "application/json",
        "ce-specversion": "1.0",
        "ce-id": f"evt_{uuid.uuid4().hex}",
        "ce-source": "urn:crm:test",
        "ce-type": "complaint-received",
        **_signed(data),
    }
    status, _, request = await _exchange(spec, online, "POST", "/v1/events", data, binary)
    assert status == 202
    spec.validate_request(request)

    bad_event = {**campaign(wf_ids(1)), "type": "campaign-started"}
    refusals = [
        (_structured(campaign(wf_ids(1)), OTHER_SECRET), 401),
        (_structured(bad_event), 400),
        (_structured(campaign(wf_ids(1), padding="x" * MAX_BODY)), 413),
        ((body, {**headers, "Content-Type": "text/plain"}), 415),
    ]
    for (refused_body, refused_headers), expected in refusals:
        status, _, request = await _exchange(
            spec, online, "POST", "/v1/events", refused_body, refused_headers
        )
        assert status == expected
    with pytest.raises(OpenAPIError):  # the documented request schema refuses it too
        spec.validate_request(
            MockRequest(
                "http://localhost:8081",
                "post",
                "/v1/events",
                headers=_structured(bad_event)[1],
                data=json.dumps(bad_event).encode(),
                content_type="application/cloudevents+json",
            )
        )


@pytest.mark.broker
async def test_probes_and_metrics_answer_as_documented(
    spec: OpenAPI, online: TestClient[web.Request, web.Application]
) -> None:
    """/healthz, /readyz and /metrics (GET and HEAD) answer as documented while connected."""
    for method in ("GET", "HEAD"):
        for path in ("/healthz", "/readyz", "/metrics"):
            status, _, _ = await _exchange(spec, online, method, path)
            assert status == 200, (method, path)


async def test_unavailable_answers_match_the_document(
    spec: OpenAPI, offline: TestClient[web.Request, web.Application]
) -> None:
    """Without the broker, events get the documented 503 with Retry-After and /readyz its 503."""
    status, answer, _ = await _exchange(spec, offline, "POST", "/v1/events", *_structured(campaign(["wf_1"])))
    assert (status, json.loads(answer)["detail"]) == (503, "not connected to the broker")
    status, answer, _ = await _exchange(spec, offline, "GET", "/readyz")
    assert (status, json.loads(answer)) == (503, {"ready": False})
    assert (await _exchange(spec, offline, "HEAD", "/readyz"))[0] == 503
    assert (await _exchange(spec, offline, "GET", "/healthz"))[0] == 200
