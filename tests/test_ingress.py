"""The webhook ingress: real HTTP against a real aiohttp server, the real RabbitMQ, the real worker.

Requests are signed with the `standardwebhooks` package directly (not with our own `sign`), so the
verification is checked against an independent signer; `sign` itself is checked the other way round.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import re
import signal
import subprocess
import time
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aio_pika
import aiohttp
import pytest
from aio_pika.abc import AbstractIncomingMessage
from prometheus_client import CollectorRegistry
from pydantic import SecretStr
from standardwebhooks import Webhook

from service import ingress
from service.core import events
from service.ingress import cloudevents, signing
from tests.support import BrokerProbe, campaign, complaint, free_port, wait_until, wf_ids

pytestmark = pytest.mark.timeout(30)

ROOT = Path(__file__).resolve().parents[1]
CLI = ROOT / ".venv/bin/workflow-canceller"
SECRET = "whsec_" + base64.b64encode(b"ingress-test-secret-32-bytes-abc").decode()
OLD_SECRET = "whsec_" + base64.b64encode(b"ingress-old-secret-is-32-bytes-x").decode()
OTHER_SECRET = "whsec_" + base64.b64encode(b"not-a-secret-the-ingress-knows!!").decode()
PHONE = "+15555550199"
MAX_BODY = 4096
VAR = "CANCELLER_WEBHOOK_SECRETS"


def signed(
    body: bytes, secret: str = SECRET, webhook_id: str | None = None, at: float | None = None
) -> dict[str, str]:
    """Standard Webhooks headers for `body`, made by the reference package."""
    webhook_id = webhook_id or f"msg_{uuid.uuid4().hex}"
    when = datetime.fromtimestamp(int(at if at is not None else time.time()), UTC)
    return {
        "webhook-id": webhook_id,
        "webhook-timestamp": str(int(when.timestamp())),
        "webhook-signature": Webhook(secret).sign(webhook_id, when, body.decode()),
    }


def structured(event: dict[str, Any], **headers: str) -> tuple[bytes, dict[str, str]]:
    """A signed structured-mode request for `event`."""
    body = json.dumps(event).encode()
    return body, {"Content-Type": "application/cloudevents+json", **signed(body), **headers}


# ------------------------------------------------------------------------------------------------
# fixtures


class RunningIngress:
    """The ingress running in this process on a free port, with its own metrics registry."""

    def __init__(self, settings: ingress.IngressSettings, http: aiohttp.ClientSession) -> None:
        self.settings = settings
        self.http = http
        self.registry = CollectorRegistry()
        self.stop_event = asyncio.Event()
        self.task: asyncio.Task[None] | None = None
        self.url = f"http://127.0.0.1:{settings.ingress_port}"

    async def start(self, ready: bool = True) -> RunningIngress:
        self.task = asyncio.create_task(ingress.serve(self.settings, self.registry, self.stop_event))
        await wait_until(self.serving, timeout_s=10, what="ingress serving")
        if ready:
            await wait_until(self.ready, timeout_s=10, what="ingress connected to the broker")
        return self

    async def serving(self) -> bool:
        try:
            async with self.http.get(f"{self.url}/healthz") as response:
                return response.status == 200
        except aiohttp.ClientConnectionError:
            return False

    async def ready(self) -> bool:
        try:
            async with self.http.get(f"{self.url}/readyz") as response:
                return response.status == 200
        except aiohttp.ClientConnectionError:
            return False

    def metric(self, name: str, **labels: str) -> float:
        value = self.registry.get_sample_value(name, labels)
        return 0.0 if value is None else value

    async def post(self, body: bytes | Any, headers: dict[str, str]) -> tuple[int, Any, dict[str, Any]]:
        """POST /v1/events: (status, response headers, JSON body)."""
        async with self.http.post(f"{self.url}/v1/events", data=body, headers=headers) as response:
            return response.status, response.headers, await response.json(content_type=None)

    async def stop(self) -> None:
        self.stop_event.set()
        if self.task is not None:
            await asyncio.wait_for(self.task, 15)


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    """One HTTP client for the test."""
    async with aiohttp.ClientSession() as session:
        yield session


@pytest.fixture
def ingress_settings(amqp_url: str, names: dict[str, str]) -> Any:
    """Build IngressSettings for the test's exchange; keyword arguments override."""

    def build(**overrides: Any) -> ingress.IngressSettings:
        values: dict[str, Any] = {
            "amqp_url": amqp_url,
            "input_exchange": names["input_exchange"],
            "webhook_secrets": (SECRET,),
            "ingress_port": free_port(),
            "ingress_host": "127.0.0.1",
            "max_body_bytes": MAX_BODY,
            "publish_timeout_s": 5.0,
            "reconnect_initial_s": 0.1,
            "reconnect_max_s": 0.3,
            **overrides,
        }
        return ingress.IngressSettings(_env_file=None, **values)

    return build


@pytest.fixture
async def start_ingress(ingress_settings: Any, http: aiohttp.ClientSession) -> AsyncIterator[Any]:
    """Start in-process ingresses (`await start_ingress(ready=..., **overrides)`); stopped afterwards."""
    running: list[RunningIngress] = []

    async def start(ready: bool = True, **overrides: Any) -> RunningIngress:
        server = RunningIngress(ingress_settings(**overrides), http)
        running.append(server)
        return await server.start(ready)

    yield start
    for server in running:
        await server.stop()


class Tap:
    """A queue of the test's own bound to the input exchange with `#`: sees everything published."""

    def __init__(self) -> None:
        self.messages: list[AbstractIncomingMessage] = []

    async def on_message(self, message: AbstractIncomingMessage) -> None:
        self.messages.append(message)

    def ids(self) -> list[str | None]:
        return [m.message_id for m in self.messages]


@pytest.fixture
async def tap(broker: BrokerProbe, names: dict[str, str]) -> Tap:
    """Bind a tap queue to the input exchange (declared by the probe)."""
    found = Tap()
    queue = await broker.channel.declare_queue(exclusive=True, auto_delete=True)
    await queue.bind(names["input_exchange"], "#")
    await queue.consume(found.on_message, no_ack=True)
    return found


async def published_only(server: RunningIngress, tap: Tap, expected: list[str]) -> None:
    """Publish a sentinel event and wait for it: then the tap holds exactly `expected` + the sentinel.

    Publishes leave the ingress on one channel in order, so anything published earlier is in
    the tap before the sentinel is: no sleeping to prove that nothing else was published.
    """
    sentinel = campaign(wf_ids(1))
    status, _, _ = await server.post(*structured(sentinel))
    assert status == 202
    await wait_until(lambda: sentinel["id"] in tap.ids(), what="the sentinel event")
    assert tap.ids() == [*expected, sentinel["id"]]


# ------------------------------------------------------------------------------------------------
# accepted: both CloudEvents modes, end to end


async def test_structured_event_reaches_the_worker_and_is_cancelled(
    simulator: Any, broker: BrokerProbe, start_worker: Any, start_ingress: Any, tap: Tap
) -> None:
    """A signed structured event is answered 202 after the confirm, published as-is and cancelled."""
    sim, _ = simulator
    await start_worker()
    server = await start_ingress()
    ids = wf_ids(2)
    event = campaign(ids)
    body, headers = structured(event)

    status, answer_headers, answer = await server.post(body, headers)

    assert (status, answer) == (202, {"status": "accepted", "event_id": event["id"]})
    assert answer_headers["Content-Type"].startswith("application/json")
    await wait_until(lambda: broker.output_ids() == set(ids), what="both workflows cancelled")
    assert all(sim.workflows[i] == "cancelled" for i in ids)
    await wait_until(lambda: len(tap.messages) == 1, what="the tapped copy")
    message = tap.messages[0]
    assert message.body == body
    assert message.routing_key == "campaign-ended"
    assert message.message_id == event["id"]
    assert message.content_type == "application/cloudevents+json"
    assert message.delivery_mode == aio_pika.DeliveryMode.PERSISTENT
    assert message.headers == {"canceller-webhook-id": headers["webhook-id"]}
    assert server.metric("canceller_ingress_requests_total", status_code="202") == 1
    assert server.metric("canceller_ingress_events_published_total", event_type="campaign-ended") == 1
    assert server.metric("canceller_ingress_publish_duration_seconds_count", result="confirmed") == 1


async def test_binary_mode_event_is_rebuilt_and_cancelled(
    simulator: Any, broker: BrokerProbe, start_worker: Any, start_ingress: Any, tap: Tap
) -> None:
    """A binary-mode event (ce-* headers, data as body) is published in structured form and cancelled."""
    await start_worker()
    server = await start_ingress()
    ids = wf_ids(2)
    data = complaint(ids)["data"]
    body = json.dumps(data).encode()
    event_id = f"evt_{uuid.uuid4().hex}"
    headers = {
        "Content-Type": "application/json",
        "ce-specversion": "1.0",
        "ce-id": event_id,
        "ce-source": "urn:crm:test%20binary",  # percent-encoded, as the binding requires
        "ce-type": "complaint-received",
        "ce-time": "2026-11-29T10:00:00Z",
        "ce-traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        **signed(body),
    }

    status, _, answer = await server.post(body, headers)

    assert (status, answer["event_id"]) == (202, event_id)
    await wait_until(lambda: broker.output_ids() == set(ids), what="both workflows cancelled")
    assert broker.outputs[0]["data"]["trigger"]["complaint_id"] == "cpl_1"
    await wait_until(lambda: len(tap.messages) == 1, what="the tapped copy")
    published = json.loads(tap.messages[0].body)
    assert published == {
        "specversion": "1.0",
        "id": event_id,
        "source": "urn:crm:test binary",
        "type": "complaint-received",
        "time": "2026-11-29T10:00:00Z",
        "traceparent": headers["ce-traceparent"],
        "datacontenttype": "application/json",
        "data": data,
    }
    assert tap.messages[0].routing_key == "complaint-received"
    assert tap.messages[0].content_type == "application/cloudevents+json"


# ------------------------------------------------------------------------------------------------
# refused: the right status, a problem body, nothing published


def _wrong_secret() -> tuple[bytes, dict[str, str]]:
    body = json.dumps(campaign(wf_ids(1))).encode()
    return body, {"Content-Type": "application/cloudevents+json", **signed(body, OTHER_SECRET)}


def _stale() -> tuple[bytes, dict[str, str]]:
    body = json.dumps(campaign(wf_ids(1))).encode()
    return body, {"Content-Type": "application/json", **signed(body, at=time.time() - 301)}


def _unsigned() -> tuple[bytes, dict[str, str]]:
    return json.dumps(campaign(wf_ids(1))).encode(), {"Content-Type": "application/cloudevents+json"}


def _unknown_type() -> tuple[bytes, dict[str, str]]:
    return structured({**campaign(wf_ids(1)), "type": "campaign-started"})


def _bad_workflow_id() -> tuple[bytes, dict[str, str]]:
    return structured(campaign(["wf_ok", "../admin"]))


def _oversize() -> tuple[bytes, dict[str, str]]:
    return structured(campaign(wf_ids(1), padding="x" * MAX_BODY))


def _text_plain() -> tuple[bytes, dict[str, str]]:
    body, headers = structured(campaign(wf_ids(1)))
    return body, {**headers, "Content-Type": "text/plain"}


@pytest.mark.parametrize(
    ("request_of", "status", "reason_in_detail"),
    [
        (_wrong_secret, 401, "no signature matches"),
        (_stale, 401, "more than 300 seconds"),
        (_unsigned, 401, "are required"),
        (_unknown_type, 400, "unknown event type 'campaign-started'"),
        (_bad_workflow_id, 400, "workflow_ids.1"),
        (_oversize, 413, "4096-byte limit"),
        (_text_plain, 415, "'text/plain'"),
    ],
    ids=[
        "wrong-signature",
        "stale-timestamp",
        "unsigned",
        "unknown-type",
        "bad-workflow-id",
        "oversize",
        "415",
    ],
)
async def test_refused_requests_publish_nothing(
    start_ingress: Any, tap: Tap, request_of: Any, status: int, reason_in_detail: str
) -> None:
    """Each refusal gets its status and an RFC 9457 problem body, and nothing reaches the exchange."""
    server = await start_ingress()
    body, headers = request_of()

    got, answer_headers, problem = await server.post(body, headers)

    assert got == status
    assert answer_headers["Content-Type"] == "application/problem+json"
    assert problem["status"] == status
    assert problem["type"].startswith("urn:workflow-canceller:problem:")
    assert problem["title"]
    assert reason_in_detail in problem["detail"]
    assert "Retry-After" not in answer_headers
    await published_only(server, tap, expected=[])
    assert server.metric("canceller_ingress_requests_total", status_code=str(status)) == 1


async def test_oversize_chunked_body_is_cut_off(start_ingress: Any, tap: Tap) -> None:
    """A body without Content-Length is read only up to the limit, then refused with 413."""
    server = await start_ingress()

    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(8):
            yield b" " * 1024

    status, _, problem = await server.post(chunks(), {"Content-Type": "application/json"})

    assert status == 413
    assert problem["detail"] == "the body is over the 4096-byte limit"
    await published_only(server, tap, expected=[])


async def test_signature_failures_are_counted_by_reason(start_ingress: Any) -> None:
    """Signature failures are counted under a bounded reason; every reason is exported from the start."""
    server = await start_ingress()
    for request_of in (_wrong_secret, _stale, _unsigned):
        await server.post(*request_of())
    body, headers = structured(campaign(wf_ids(1)))
    await server.post(body, {**headers, "webhook-timestamp": "soon"})

    counted = {
        r: server.metric("canceller_ingress_signature_failures_total", reason=r)
        for r in signing.SIGNATURE_FAILURES
    }
    assert counted == {"missing_header": 1, "malformed_header": 1, "stale_timestamp": 1, "no_match": 1}
    async with server.http.get(f"{server.url}/metrics") as response:
        text = await response.text()
    assert 'canceller_ingress_signature_failures_total{reason="no_match"} 1.0' in text


# ------------------------------------------------------------------------------------------------
# replays, rotation, the broker away


async def test_replayed_webhook_id_publishes_once(start_ingress: Any, tap: Tap) -> None:
    """The same webhook-id again (as sent, or re-signed later) is answered 202 and not published again."""
    server = await start_ingress()
    event = complaint(wf_ids(1))
    body, headers = structured(event)

    first = await server.post(body, headers)
    again = await server.post(body, headers)
    resigned = await server.post(
        body, {**headers, **signed(body, webhook_id=headers["webhook-id"], at=time.time() + 2)}
    )

    assert (first[0], first[2]["status"]) == (202, "accepted")
    assert again[0] == resigned[0] == 202
    assert again[2] == resigned[2] == {"status": "duplicate", "event_id": event["id"]}
    await published_only(server, tap, expected=[event["id"]])
    assert server.metric("canceller_ingress_replays_total") == 2


async def test_old_and_new_secrets_are_both_accepted(start_ingress: Any, tap: Tap) -> None:
    """During a rotation a request signed with either configured secret (or with both) is accepted."""
    server = await start_ingress(webhook_secrets=f"{SECRET}, {OLD_SECRET}")
    accepted = []
    for secret in (SECRET, OLD_SECRET):
        event = campaign(wf_ids(1))
        body = json.dumps(event).encode()
        status, _, _ = await server.post(body, {"Content-Type": "application/json", **signed(body, secret)})
        assert status == 202, secret[:8]
        accepted.append(event["id"])
    event = campaign(wf_ids(1))
    body = json.dumps(event).encode()
    both = signed(body, OTHER_SECRET)
    both["webhook-signature"] += (
        " "
        + signed(body, OLD_SECRET, both["webhook-id"], int(both["webhook-timestamp"]))["webhook-signature"]
    )
    assert (await server.post(body, {"Content-Type": "application/json", **both}))[0] == 202
    accepted.append(event["id"])
    await published_only(server, tap, expected=accepted)


async def test_broker_unreachable_answers_503_with_retry_after(start_ingress: Any) -> None:
    """With no broker to talk to, /readyz is 503 and events are refused with 503 + Retry-After."""
    server = await start_ingress(ready=False, amqp_url=f"amqp://guest:guest@127.0.0.1:{free_port()}/")
    body, headers = structured(campaign(wf_ids(1)))

    status, answer_headers, problem = await server.post(body, headers)

    assert status == 503
    assert answer_headers["Retry-After"] == "5"
    assert problem["detail"] == "not connected to the broker"
    assert not await server.ready()
    await wait_until(lambda: server.metric("canceller_ingress_broker_reconnects_total") >= 2, what="retries")
    assert server.metric("canceller_ingress_ready") == 0
    assert server.metric("canceller_ingress_events_published_total", event_type="campaign-ended") == 0


async def test_unroutable_event_is_503_and_not_remembered(
    start_ingress: Any, broker: BrokerProbe, names: Any
) -> None:
    """With no queue bound the publish is returned: 503, and the same request succeeds once one is."""
    server = await start_ingress()
    event = campaign(wf_ids(1))
    body, headers = structured(event)

    status, answer_headers, problem = await server.post(body, headers)

    assert (status, answer_headers["Retry-After"]) == (503, "5")
    assert "no queue is bound" in problem["detail"]
    assert server.metric("canceller_ingress_publish_duration_seconds_count", result="unroutable") == 1
    queue = await broker.channel.declare_queue(exclusive=True, auto_delete=True)
    await queue.bind(names["input_exchange"], "campaign-ended")
    status, _, answer = await server.post(body, headers)
    assert (status, answer["status"]) == (202, "accepted")
    assert await broker.depth(queue.name) == 1


async def test_reconnects_after_losing_its_channel(
    start_ingress: Any, broker: BrokerProbe, names: Any
) -> None:
    """When the broker closes its channel the request gets 503, and the ingress reconnects on its own."""
    server = await start_ingress()
    await broker.channel.exchange_delete(names["input_exchange"])

    status, answer_headers, _ = await server.post(*structured(campaign(wf_ids(1))))

    assert (status, answer_headers["Retry-After"]) == (503, "5")
    await wait_until(
        lambda: server.metric("canceller_ingress_broker_reconnects_total") >= 1, what="a reconnect"
    )
    await wait_until(server.ready, what="ready again")
    queue = await broker.channel.declare_queue(exclusive=True, auto_delete=True)
    await queue.bind(names["input_exchange"], "#")  # the exchange is back: the ingress redeclared it
    assert (await server.post(*structured(campaign(wf_ids(1)))))[0] == 202


# ------------------------------------------------------------------------------------------------
# the commands, as real processes


def _cli_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CANCELLER_")}
    return {**env, **extra}


def _cli(*args: str, env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(CLI), *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=20, check=False
    )


async def test_sign_output_verifies_and_is_accepted(start_ingress: Any, tap: Tap, tmp_path: Path) -> None:
    """`sign` prints headers the reference package verifies, and the ingress accepts them."""
    server = await start_ingress()
    event = campaign(wf_ids(1))
    body = json.dumps(event).encode()
    (tmp_path / "body.json").write_bytes(body)

    result = await asyncio.to_thread(
        _cli, "sign", "--file", "body.json", env=_cli_env(CANCELLER_WEBHOOK_SECRETS=SECRET), cwd=tmp_path
    )

    assert result.returncode == 0, result.stderr
    headers = dict(line.split(": ", 1) for line in result.stdout.splitlines())
    assert headers.keys() == {"webhook-id", "webhook-timestamp", "webhook-signature"}
    Webhook(SECRET).verify(body, headers, json_parse=False)  # raises if it does not verify
    status, _, _ = await server.post(body, {"Content-Type": "application/cloudevents+json", **headers})
    assert status == 202
    await wait_until(lambda: tap.ids() == [event["id"]], what="the signed event")


def test_sign_reads_another_variable_and_prints_curl(tmp_path: Path) -> None:
    """`sign --secret-env VAR --curl URL` signs with VAR's first secret and prints a curl command."""
    (tmp_path / "body.json").write_bytes(b'{"specversion": "1.0"}')
    env = _cli_env(CRM_WEBHOOK_SECRET=f"{OLD_SECRET},{SECRET}")
    args = (
        "sign",
        "--file",
        "body.json",
        "--secret-env",
        "CRM_WEBHOOK_SECRET",
        "--id",
        "msg_1",
        "--timestamp",
        "1700000000",
    )

    result = _cli(*args, "--curl", "http://127.0.0.1:8081/v1/events", env=env, cwd=tmp_path)

    expected = signing.sign(SecretStr(OLD_SECRET), "msg_1", 1700000000, b'{"specversion": "1.0"}')
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("curl -sS -i -X POST http://127.0.0.1:8081/v1/events")
    assert f"'webhook-signature: {expected['webhook-signature']}'" in result.stdout
    assert result.stdout.rstrip().endswith("--data-binary @body.json")
    assert OLD_SECRET not in result.stdout


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (None, f"{VAR}: required but not set"),
        (
            "whsec_c2hvcnQ=",
            f"{VAR}: entry 1 of 1 decodes to 5 bytes; at least 24 are required (value not shown)",
        ),
        (f"{SECRET},hunter2-not-whsec", f"{VAR}: entry 2 of 2 must start with whsec_ (value not shown)"),
        ("whsec_%%%notbase64%%%", f"{VAR}: entry 1 of 1 is not base64 after whsec_ (value not shown)"),
    ],
    ids=["missing", "short", "no-prefix", "not-base64"],
)
def test_bad_webhook_secrets_exit_2_without_echoing(tmp_path: Path, value: str | None, message: str) -> None:
    """A missing or malformed CANCELLER_WEBHOOK_SECRETS exits 2 with one line naming it, value unseen."""
    env = _cli_env() if value is None else _cli_env(**{VAR: value})

    result = _cli("ingress", env=env, cwd=tmp_path)

    assert result.returncode == 2
    assert result.stderr.splitlines() == [f"configuration error: {message}"]
    assert result.stdout == ""
    for part in (value or "").split(","):
        assert part not in result.stderr or not part


async def test_ingress_process_logs_json_without_phone_or_secret(
    amqp_url: str, names: dict[str, str], tap: Tap, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    """`workflow-canceller ingress` serves, logs JSON lines without the phone number or the secret, and
    exits 0 on SIGTERM; no answer (not even a 400's detail) carries the phone number either."""
    port = free_port()
    env = _cli_env(
        CANCELLER_WEBHOOK_SECRETS=SECRET,
        CANCELLER_AMQP_URL=amqp_url,
        CANCELLER_INPUT_EXCHANGE=names["input_exchange"],
        CANCELLER_INGRESS_PORT=str(port),
        CANCELLER_INGRESS_HOST="127.0.0.1",
        CANCELLER_LOG_LEVEL="DEBUG",
    )
    proc = await asyncio.create_subprocess_exec(
        str(CLI),
        "ingress",
        env=env,
        cwd=tmp_path,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    server = RunningIngress(
        ingress.IngressSettings(_env_file=None, webhook_secrets=SECRET, ingress_port=port), http
    )
    try:
        await wait_until(server.ready, timeout_s=15, what="the ingress process ready")
        good = complaint(wf_ids(1), phone=PHONE)
        bad = complaint(["not a workflow id"], phone=PHONE)
        bad["data"]["phone_number"] = {"number": PHONE}
        answers = [await server.post(*structured(good)), await server.post(*structured(bad))]
        assert [status for status, _, _ in answers] == [202, 400]
        assert all(PHONE not in json.dumps(answer) for _, _, answer in answers)
    finally:
        proc.send_signal(signal.SIGTERM)
        output, _ = await asyncio.wait_for(proc.communicate(), 15)
    assert proc.returncode == 0
    lines = [json.loads(line) for line in output.decode().splitlines()]
    assert {
        "service.started",
        "broker.connected",
        "ingress.accepted",
        "ingress.rejected",
        "service.stopped",
    } <= {line["event"] for line in lines}
    text = output.decode()
    assert PHONE not in text and PHONE.lstrip("+") not in text
    assert SECRET not in text and SECRET.removeprefix("whsec_") not in text


# ------------------------------------------------------------------------------------------------
# the pure parts: verification and the binary-mode binding


@pytest.fixture
def verifier() -> signing.Verifier:
    """A verifier holding the test secret."""
    return signing.Verifier([SecretStr(SECRET)])


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"webhook-signature": "v1,AAAA"}, "no_match"),
        ({"webhook-signature": "garbage-without-a-comma"}, "no_match"),
        ({"webhook-signature": "v1,!!!not base64!!!"}, "no_match"),
        ({"webhook-signature": "v2,whatever"}, "no_match"),
        ({"webhook-timestamp": "12.5"}, "malformed_header"),
        ({"webhook-timestamp": "1e30"}, "malformed_header"),
        ({"webhook-id": "has space"}, "malformed_header"),
        ({"webhook-id": "x" * 257}, "malformed_header"),
        ({"webhook-signature": "v1," + "A" * 5000}, "malformed_header"),
        ({"webhook-id": ""}, "missing_header"),
    ],
)
def test_malformed_signature_headers_fail_with_a_bounded_reason(
    verifier: signing.Verifier, change: dict[str, str], reason: str
) -> None:
    """Whatever the headers hold, verification fails with one of the bounded reasons, never a crash."""
    body = b'{"a": 1}'
    headers = {**signed(body), **change}
    with pytest.raises(signing.SignatureError) as failure:
        verifier.verify(body, headers, time.time())
    assert failure.value.reason == reason


def test_non_utf8_body_does_not_verify(verifier: signing.Verifier) -> None:
    """A body that is not UTF-8 (the package raises UnicodeDecodeError) is a failed verification."""
    headers = signed(b"{}")
    with pytest.raises(signing.SignatureError) as failure:
        verifier.verify(b"\xff\xfe{}", headers, time.time())
    assert failure.value.reason == "no_match"


def test_timestamp_tolerance_is_five_minutes_both_ways(verifier: signing.Verifier) -> None:
    """Timestamps just inside 300 s early or late verify; 301 s off does not."""
    body, now = b"{}", int(time.time())
    for offset in (-299, 299):
        assert verifier.verify(body, signed(body, webhook_id="msg_ok", at=now + offset), now) == "msg_ok"
    for offset in (-301, 301):
        with pytest.raises(signing.SignatureError, match="more than 300 seconds"):
            verifier.verify(body, signed(body, at=now + offset), now)


@pytest.mark.parametrize(
    ("content_type", "headers", "mode"),
    [
        ("application/cloudevents+json; charset=utf-8", {"ce-specversion": "1.0"}, "structured"),
        ("application/json", {}, "structured"),
        ("Application/JSON; charset=utf-8", {"ce-specversion": "1.0"}, "binary"),
    ],
)
def test_mode_follows_the_content_type(content_type: str, headers: dict[str, str], mode: str) -> None:
    """Structured for cloudevents+json (ce-* headers or not) and plain JSON; binary for JSON with ce-*."""
    assert cloudevents.mode_of(content_type, headers) == mode


@pytest.mark.parametrize(
    "content_type", [None, "text/plain", "application/cloudevents-batch+json", "application/xml"]
)
def test_other_content_types_are_unsupported(content_type: str | None) -> None:
    """Anything but the two JSON media types (including batches and no content type) is refused."""
    with pytest.raises(cloudevents.UnsupportedMediaType):
        cloudevents.mode_of(content_type, {})


@pytest.mark.parametrize(
    ("headers", "body", "reason"),
    [
        ([("ce-data", "x")], b"{}", "is not a CloudEvents attribute"),
        ([("ce-Bad_Name", "x")], b"{}", "is not a CloudEvents attribute"),
        ([("ce-id", "a"), ("CE-ID", "b")], b"{}", "appears more than once"),
        ([("ce-source", "%ff")], b"{}", "not percent-encoded UTF-8"),
        ([("ce-id", "a")], b"not json", "the body (the event's data) is not JSON"),
    ],
)
def test_bad_binary_mode_requests_are_invalid(
    headers: list[tuple[str, str]], body: bytes, reason: str
) -> None:
    """Binary-mode problems become InvalidEvent (a 400) with a value-free reason."""
    with pytest.raises(events.InvalidEvent, match=re.escape(reason)):
        cloudevents.from_binary(headers, body)


def test_binary_mode_without_required_attributes_fails_the_worker_validation() -> None:
    """Missing ce-id is caught by the same events.parse the worker runs, naming the field."""
    rebuilt = cloudevents.from_binary(
        [("ce-specversion", "1.0"), ("ce-source", "s"), ("ce-type", "campaign-ended")],
        json.dumps({"campaign_id": "c", "workflow_ids": ["wf_1"]}).encode(),
    )
    with pytest.raises(events.InvalidEvent, match="id: Field required"):
        events.parse(rebuilt, cloudevents.STRUCTURED, MAX_BODY)


def test_settings_keep_secrets_secret() -> None:
    """The secrets are SecretStr: neither repr nor the settings' string form shows them."""
    settings = ingress.IngressSettings(_env_file=None, webhook_secrets=f"{SECRET},{OLD_SECRET}")
    assert len(settings.webhook_secrets) == 2
    assert SECRET not in repr(settings) and SECRET not in str(settings)
