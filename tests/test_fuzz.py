"""Fuzzing through the real broker: thousands of hostile messages at a running worker.

Random bytes, truncated and mutated events, huge ids, wrong types, unicode, nested junk, odd
content types and random AMQP headers (including names the service itself uses) are published to
the input exchange, with valid events mixed in. The worker must stay alive and ready, dead-letter
every invalid message with reason `invalid` without calling DialNexa, process every valid one, and
leave its input queues empty. The generator is seeded: a failure replays exactly.
"""

from __future__ import annotations

import asyncio
import json
import random
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import aio_pika
import pytest

from service.core.events import InvalidEvent, parse
from tests.support import BrokerProbe, campaign, complaint, wait_until

pytestmark = [pytest.mark.broker, pytest.mark.timeout(90)]

SEED = 20261129
MESSAGES = 2400
VALID_SHARE = 0.05
MAX_BODY_BYTES = 16_384
ROUTING_KEYS = ("campaign-ended", "complaint-received", "campaign-ended")
OWN_HEADERS = (
    "x-canceller-reason",
    "x-canceller-error",
    "x-canceller-attempts",
    "x-canceller-done",
    "x-canceller-first-seen-ms",
    "canceller-return-queue",
    "x-death",
    "x-delivery-count",
    "x-first-death-queue",
)
UNICODE = ["é", "ß", "😀", "\u202e", "\x00", "\ufeff", "中文", "\ud7ff", "א", "\n", "\\", '"']


class BinaryLongString(str):
    """A header value sent as an AMQP long string holding arbitrary bytes, as other clients can send.

    AMQP long strings are binary; pamqp decodes one that is not UTF-8 to `bytes`. pamqp's encoder
    takes the bytes from `str.encode`, so this subclass puts raw bytes on the wire.
    """

    def __new__(cls, raw: bytes) -> BinaryLongString:
        text = super().__new__(cls, raw.hex())
        text.raw = raw
        return text

    raw: bytes

    def encode(self, encoding: str = "utf-8", errors: str = "strict") -> bytes:
        return self.raw


class Fuzzer:
    """Seeded generator of input messages: (body, content type, headers)."""

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)

    def valid_event(self, ids: list[str]) -> dict[str, Any]:
        kind = self.rng.choice((campaign, complaint))
        return kind(ids, event_id=f"evt_{uuid.UUID(int=self.rng.getrandbits(128)).hex}")

    def text(self, size: int) -> str:
        pool = "abcXYZ019_-:/.% " + "".join(UNICODE)
        return "".join(self.rng.choice(pool) for _ in range(size))

    def junk(self, depth: int = 0) -> Any:
        """A random JSON value, nested a few levels."""
        kinds: list[Callable[[], Any]] = [
            lambda: None,
            lambda: self.rng.choice([True, False]),
            lambda: self.rng.randint(-(2**70), 2**70),
            lambda: self.rng.uniform(-1e308, 1e308),
            lambda: self.text(self.rng.randint(0, 20)),
        ]
        if depth < 3:
            kinds += [
                lambda: [self.junk(depth + 1) for _ in range(self.rng.randint(0, 4))],
                lambda: {self.text(4): self.junk(depth + 1) for _ in range(self.rng.randint(0, 4))},
            ]
        return self.rng.choice(kinds)()

    def invalid_body(self, n: int) -> bytes:
        """One hostile body (message `n`), of a kind chosen at random; a few happen to stay valid."""
        rng = self.rng
        base = self.valid_event([f"wf_fuzz_{n}"])
        kind = rng.randrange(13)
        if kind == 0:  # random bytes
            return rng.randbytes(rng.randint(0, 400))
        if kind == 1:  # a truncated valid event
            body = json.dumps(base).encode()
            return body[: rng.randrange(len(body))]
        if kind == 2:  # a valid event with bytes changed until it no longer parses
            body = bytearray(json.dumps(base).encode())
            for _ in range(rng.randint(1, 8)):
                body[rng.randrange(len(body))] = rng.randrange(256)
            return bytes(body)
        if kind == 3:  # huge or malformed ids
            bad = rng.choice(
                [
                    "w" * rng.randint(129, 5000),
                    "../../admin",
                    "wf 1",
                    "wf_1\n",
                    "",
                    "-x",
                    "wf/1",
                    self.text(10),
                ]
            )
            base["data"]["workflow_ids"] = [*base["data"]["workflow_ids"], bad]
        elif kind == 4:  # too many ids
            base["data"]["workflow_ids"] = [f"wf_{n}" for n in range(1001)]
        elif kind == 5:  # wrong types
            field = rng.choice(["specversion", "id", "source", "type", "data"])
            base[field] = rng.choice([1.0, 7, None, [], {}, True, self.junk()])
        elif kind == 6:  # wrong types inside data
            base["data"][rng.choice(["workflow_ids", "campaign_id", "complaint_id"])] = rng.choice(
                [None, 5, "wf_1", {"a": 1}, [[1]], self.junk()]
            )
        elif kind == 7:  # unknown or unicode type
            base["type"] = rng.choice(["lead-created", "Campaign-Ended", "", self.text(rng.randint(1, 300))])
        elif kind == 8:  # nested junk where objects belong, or no object at all
            return json.dumps(rng.choice([self.junk(), [base], "campaign-ended", base["data"]])).encode()
        elif kind == 9:  # deeply nested arrays
            depth = rng.randint(50, 20_000)
            return b'{"specversion": "1.0", "data": ' + b"[" * depth + b"]" * depth + b"}"
        elif kind == 10:  # over the size limit
            base["data"]["reason"] = "x" * (MAX_BODY_BYTES + rng.randint(0, 4096))
        elif kind == 11:  # not UTF-8
            return (
                json.dumps(base).encode().replace(b"cmp_1", b"cmp_\xff\xfe", 1).replace(b"cpl_1", b"\xc3(", 1)
            )
        else:  # required fields missing
            for field in rng.sample(["specversion", "id", "source", "type", "data"], rng.randint(1, 3)):
                base.pop(field, None)
        return json.dumps(base, ensure_ascii=rng.choice([True, False])).encode("utf-8", "surrogatepass")

    def content_type(self, valid: bool) -> str | None:
        accepted = [
            None,
            "application/json",
            "application/cloudevents+json",
            "application/json; charset=utf-8",
        ]
        if valid or self.rng.random() < 0.7:
            return self.rng.choice(accepted)
        return self.rng.choice(["text/plain", "application/xml", "", self.text(self.rng.randint(1, 60))])

    def headers(self, own_names: bool) -> dict[str, Any]:
        """Random AMQP headers; with `own_names`, some named like the service's own."""
        rng = self.rng
        names = [self.text(rng.randint(1, 30)) for _ in range(rng.randint(0, 4))]
        if own_names:
            names += rng.sample(OWN_HEADERS, rng.randint(0, 4))
        values: list[Callable[[], Any]] = [
            lambda: self.text(rng.randint(0, 40)),
            lambda: rng.randint(-(2**63), 2**63 - 1),
            lambda: rng.choice([True, False]),
            lambda: rng.uniform(-1e9, 1e9),
            lambda: None,
            lambda: bytearray(rng.randbytes(rng.randint(0, 16))),  # AMQP byte array
            # A long string that is not UTF-8 is left out here: test_poison_headers_are_dead_lettered.
            lambda: [self.text(3), rng.randint(0, 9)],
            lambda: {"queue": self.text(5), "count": rng.randint(0, 99)},
            lambda: datetime(2026, 1, 1, tzinfo=UTC),
            lambda: Decimal("1.5"),
            lambda: "9" * rng.choice([5, 18, 5000]),  # 19-4300 digits: the poison-header test below
            lambda: "1:ff",
        ]
        return {name: rng.choice(values)() for name in names}


def _header(message: Any, name: str) -> Any:
    value = (message.headers or {}).get(name)
    return value.decode() if isinstance(value, bytes) else value


async def test_fuzzed_messages_are_dead_lettered_and_valid_ones_processed(
    simulator: Any, broker: BrokerProbe, start_worker: Any
) -> None:
    """2,400 hostile messages: each invalid one dead-lettered as invalid, no API call; the rest processed."""
    sim, _ = simulator
    worker = await start_worker(max_body_bytes=MAX_BODY_BYTES)
    await broker.watch_dlq()
    fuzz = Fuzzer(SEED)

    messages: list[tuple[str, aio_pika.Message, str]] = []
    for n in range(MESSAGES):
        if fuzz.rng.random() < VALID_SHARE:
            ids = [f"wf_fz{n}_{k}" for k in range(fuzz.rng.randint(1, 3))]
            body = json.dumps(fuzz.valid_event(ids)).encode()
            content_type = fuzz.content_type(valid=True)
            headers = fuzz.headers(own_names=False)  # forged retry state: see docs/security.md
        else:
            body = fuzz.invalid_body(n)
            content_type = fuzz.content_type(valid=False)
            headers = fuzz.headers(own_names=True)
        message = aio_pika.Message(body, content_type=content_type, headers=headers, message_id=f"fuzz-{n}")
        messages.append((f"fuzz-{n}", message, fuzz.rng.choice(ROUTING_KEYS)))

    # What the worker must do with each: the parser decides (its own properties: test_properties.py).
    invalid: set[str] = set()
    valid_ids: set[str] = set()
    for message_id, message, _ in messages:
        try:
            event = parse(message.body, message.content_type, MAX_BODY_BYTES)
        except InvalidEvent:
            invalid.add(message_id)
        else:
            valid_ids.update(event.data.workflow_ids)
    assert len(invalid) > 0.9 * MESSAGES and len(valid_ids) > 0.04 * MESSAGES  # a meaningful mix

    exchange = await broker.channel.get_exchange(broker.names["input_exchange"])
    for start in range(0, len(messages), 200):
        batch = messages[start : start + 200]
        await asyncio.gather(*(exchange.publish(m, routing_key=key) for _, m, key in batch))

    await wait_until(
        lambda: len(broker.dead) >= len(invalid), timeout_s=40, what="every invalid message dead-lettered"
    )
    await wait_until(
        lambda: broker.output_ids() == valid_ids, timeout_s=20, what="every valid workflow cancelled"
    )
    for queue in worker.settings.input_queues:
        await wait_until(lambda q=queue: broker.has_depth(q, 0), what=f"{queue} empty")

    assert len(broker.dead) == len(invalid)  # nothing valid was dead-lettered, nothing twice
    assert {m.message_id for m in broker.dead} == invalid
    for dead in broker.dead:
        assert _header(dead, "x-canceller-reason") == "invalid", dead.message_id
        error = _header(dead, "x-canceller-error")
        assert isinstance(error, str) and error.strip() and len(error) <= 512, (dead.message_id, error)
        assert "canceller-return-queue" not in (dead.headers or {})
    by_id = {m.message_id: m for m in broker.dead}
    sent = {message_id: message for message_id, message, _ in messages}
    assert all(by_id[i].body == sent[i].body for i in invalid)  # bodies kept, byte for byte
    assert {c.workflow_id for c in sim.calls} == valid_ids  # no API call for an invalid body
    assert sim.call_count == len(valid_ids)
    assert worker.task is not None and not worker.task.done()
    assert await worker.ready()
    assert worker.metric("canceller_dead_lettered_total", reason="invalid") == len(invalid)
    assert worker.metric("canceller_broker_reconnects_total") == 0


POISON_HEADERS = {
    "non-UTF-8 long string": {"x-trace": BinaryLongString(b"\xff\xfe\x00binary")},
    "attempts beyond 64 bits": {"canceller-return-queue": "x", "x-canceller-attempts": "9" * 30},
}


@pytest.mark.parametrize("headers", list(POISON_HEADERS.values()), ids=list(POISON_HEADERS))
async def test_poison_headers_are_dead_lettered(
    simulator: Any, broker: BrokerProbe, start_worker: Any, headers: dict[str, Any]
) -> None:
    """An invalid message whose headers cannot be re-encoded as they are is still dead-lettered."""
    worker = await start_worker()
    await broker.watch_dlq()
    exchange = await broker.channel.get_exchange(broker.names["input_exchange"])
    await exchange.publish(aio_pika.Message(b"{not json", headers=headers), routing_key="campaign-ended")
    await wait_until(lambda: len(broker.dead) == 1, timeout_s=5, what="the message dead-lettered")
    assert _header(broker.dead[0], "x-canceller-reason") == "invalid"
    assert await broker.depth(worker.settings.campaign_queue) == 0


async def test_forged_retry_state_does_not_skip_workflows(
    simulator: Any, broker: BrokerProbe, start_worker: Any
) -> None:
    """A valid event carrying forged retry headers still cancels and publishes every workflow."""
    sim, _ = simulator
    await start_worker()
    ids = [f"wf_forged_{uuid.uuid4().hex[:8]}_{n}" for n in range(2)]
    forged = {"canceller-return-queue": broker.names["campaign_queue"], "x-canceller-done": "2:3"}
    exchange = await broker.channel.get_exchange(broker.names["input_exchange"])
    body = json.dumps(campaign(ids)).encode()
    await exchange.publish(aio_pika.Message(body, headers=forged), routing_key="campaign-ended")
    await wait_until(lambda: broker.output_ids() == set(ids), timeout_s=5, what="both workflows cancelled")
    assert {c.workflow_id for c in sim.calls} == set(ids)
