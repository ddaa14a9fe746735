"""Test helpers: a broker probe, workflow ids, and the DialNexa client's seam (`MockSession`); the
event builders, waiting and free ports are `testkit`'s, shared with the benchmarks and drills (and
named here too, where the tests import them from)."""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from typing import Any

import aio_pika
import httpx
from aio_pika.abc import AbstractChannel, AbstractConnection, AbstractIncomingMessage

from service.config import Settings
from service.dialnexa.http import Answer, ConnectError, NetworkError, ReadTimeout, RemoteProtocolError
from testkit import campaign as campaign  # re-exported: the tests import these from here
from testkit import complaint as complaint
from testkit import encoded
from testkit import free_port as free_port
from testkit import wait_until as wait_until

Handler = Callable[[httpx.Request], httpx.Response]
_FAILURES = {cls.__name__: cls for cls in (ConnectError, ReadTimeout, RemoteProtocolError)}


class MockSession:
    """The DialNexa client's `HttpSession` answered by `handler`, a function from request to
    response as httpx's `MockTransport` takes; an httpx transport error it raises becomes the
    session failure of the same name (`NetworkError` for the rest)."""

    def __init__(
        self, handler: Handler, base_url: str = "https://api.example.test/v1", api_key: str = "key_1:s3cret"
    ) -> None:
        self._handler = handler
        self._base_url = base_url.rstrip("/") + "/"
        self._headers = {"Authorization": f"Bearer {api_key}", "Accept": "application/json"}

    async def request(self, method: str, path: str) -> Answer:
        request = httpx.Request(method, self._base_url + path, headers=self._headers)
        try:
            response = self._handler(request)
        except httpx.TransportError as error:
            raise _FAILURES.get(type(error).__name__, NetworkError)(str(error)) from error
        return Answer(response.status_code, response.headers, response.read(), response.reason_phrase)

    async def aclose(self) -> None:
        return None


def settings(**values: Any) -> Settings:
    """Settings from keyword arguments only (no environment file), with an API key unless given."""
    return Settings(_env_file=None, **{"dialnexa_api_key": "k:s", **values})


def wf_ids(count: int, prefix: str = "wf") -> list[str]:
    """`count` unique workflow ids."""
    tag = uuid.uuid4().hex[:6]
    return [f"{prefix}_{tag}_{n}" for n in range(count)]


class BrokerProbe:
    """The test's side of the broker: publishes input, collects every output and DLQ message."""

    def __init__(self, url: str, names: dict[str, str]) -> None:
        self.url = url
        self.names = names
        self.outputs: list[dict[str, Any]] = []
        self.output_properties: list[tuple[str | None, int | None, str | None]] = []
        self.dead: list[AbstractIncomingMessage] = []
        self._connection: AbstractConnection | None = None
        self._channel: AbstractChannel | None = None

    async def open(self, bind_outputs: bool = True) -> None:
        self._connection = await aio_pika.connect(self.url)
        self._channel = await self._connection.channel(publisher_confirms=True)
        await self._channel.declare_exchange(self.names["input_exchange"], "topic", durable=True)
        if bind_outputs:
            # Durable and named, so outputs published while this probe is cut off are kept.
            output = await self._channel.declare_exchange(
                self.names["output_exchange"], "topic", durable=True
            )
            queue = await self._channel.declare_queue(self.outputs_queue, durable=True)
            await queue.bind(output, "workflow-cancelled")
            await queue.consume(self._on_output, no_ack=True)

    @property
    def outputs_queue(self) -> str:
        return self.names["output_exchange"] + ".test-outputs"

    async def close(self, delete: bool = True) -> None:
        if self._connection is None:
            return
        if delete and not self._connection.is_closed:
            channel = await self._connection.channel()
            await channel.queue_delete(self.outputs_queue)
        await self._connection.close()

    @property
    def channel(self) -> AbstractChannel:
        assert self._channel is not None
        return self._channel

    async def _on_output(self, message: AbstractIncomingMessage) -> None:
        self.outputs.append(json.loads(message.body))
        mode = message.delivery_mode
        self.output_properties.append((message.content_type, int(mode) if mode else None, message.message_id))

    async def publish(
        self,
        event: dict[str, Any] | bytes,
        routing_key: str | None = None,
        content_type: str | None = "application/cloudevents+json",
        headers: dict[str, Any] | None = None,
    ) -> None:
        """Publish one input message (persistent, confirmed) to the input exchange."""
        if isinstance(event, dict):
            body = encoded(event)
            routing_key = routing_key or str(event["type"])
        else:
            body = event
        exchange = await self.channel.get_exchange(self.names["input_exchange"])
        await exchange.publish(
            aio_pika.Message(
                body,
                content_type=content_type,
                headers=headers,
                delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
            ),
            routing_key=routing_key or "campaign-ended",
        )

    async def watch_dlq(self) -> None:
        """Start collecting DLQ messages (after the worker declared the DLQ)."""
        queue = await self.channel.get_queue(self.names["dead_letter_queue"], ensure=True)
        await queue.consume(self._on_dead)

    async def _on_dead(self, message: AbstractIncomingMessage) -> None:
        await message.ack()
        self.dead.append(message)

    async def depth(self, queue: str) -> int:
        """Messages ready in `queue` right now (passive declare on a throwaway channel)."""
        assert self._connection is not None
        channel = await self._connection.channel()
        try:
            declared = await channel.declare_queue(queue, passive=True)
            count = declared.declaration_result.message_count
            return int(count or 0)
        finally:
            await channel.close()

    async def has_depth(self, queue: str, expected: int) -> bool:
        """Whether `queue` holds exactly `expected` ready messages."""
        return await self.depth(queue) == expected

    def outputs_for(self, workflow_id: str) -> list[dict[str, Any]]:
        return [o for o in self.outputs if o["subject"] == workflow_id]

    def output_ids(self) -> set[str]:
        return {o["subject"] for o in self.outputs}
