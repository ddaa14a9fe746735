"""The DialNexa client over its one HTTP session (aiohttp), over real HTTP to the simulator."""

from __future__ import annotations

import gzip
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import web
from prometheus_client import CollectorRegistry
from pydantic import SecretStr

from service.core.ports import CancelResult, RateLimitedError, ServerError, TransportError
from service.dialnexa.client import DialNexaClient
from service.dialnexa.http import AiohttpSession
from service.observe.metrics import Metrics
from testkit.processes import serving
from tests.support import free_port


def session(base_url: str, *, read_timeout_s: float = 1, max_connections: int = 1) -> AiohttpSession:
    """The service's HTTP session, with the simulator's key and short timeouts."""
    return AiohttpSession(
        base_url,
        SecretStr("sim_key:sim_secret"),
        connect_timeout_s=1,
        read_timeout_s=read_timeout_s,
        max_connections=max_connections,
    )


@pytest.fixture
async def client(simulator: Any) -> AsyncIterator[DialNexaClient]:
    """A DialNexa client pointed at the simulator, with a short read timeout."""
    _, base_url = simulator
    http = session(base_url, read_timeout_s=0.5, max_connections=4)
    yield DialNexaClient(http, Metrics.build(CollectorRegistry()))
    await http.aclose()


async def test_answers_are_mapped_the_same(client: DialNexaClient, simulator: Any) -> None:
    """2xx, 409 and 5xx read the same  (wrapped envelope included)."""
    sim, _ = simulator
    sim.set_status("wf_done", "completed")
    sim.script("wf_wrapped", [{"status": 200, "envelope": "wrapped"}])
    sim.script("wf_flaky", [503])
    assert await client.cancel("wf_new") == CancelResult("wf_new", "cancelled", "cancelled")
    assert await client.cancel("wf_wrapped") == CancelResult("wf_wrapped", "cancelled", "cancelled")
    assert (await client.cancel("wf_done")).outcome == "already_terminal"
    with pytest.raises(ServerError):
        await client.cancel("wf_flaky")


async def test_dropped_connection_is_a_transport_error(client: DialNexaClient, simulator: Any) -> None:
    """A connection closed without an answer raises TransportError, and the next call works."""
    sim, _ = simulator
    sim.script("wf_drop", ["drop"])
    with pytest.raises(TransportError):
        await client.cancel("wf_drop")
    assert (await client.cancel("wf_drop")).outcome == "cancelled"


async def test_slow_answer_is_a_transport_error(client: DialNexaClient, simulator: Any) -> None:
    """An answer slower than the read timeout raises TransportError."""
    sim, _ = simulator
    sim.script("wf_slow", [{"delay_s": 2.0, "status": 200}])
    with pytest.raises(TransportError):
        await client.cancel("wf_slow")


async def test_refused_connection_is_a_transport_error() -> None:
    """Nothing listening: TransportError, not a crash."""
    http = session(f"http://127.0.0.1:{free_port()}/v1")
    try:
        with pytest.raises(TransportError):
            await DialNexaClient(http, Metrics.build(CollectorRegistry())).cancel("wf_1")
    finally:
        await http.aclose()


async def test_rate_limit_headers_are_read(simulator: Any) -> None:
    """X-RateLimit-* on every answer and Retry-After on a 429 come back with each reply."""
    sim, base_url = simulator
    sim.config.rate_limit = 2
    sim.config.rate_window_s = 30.0
    http = session(base_url)
    api = DialNexaClient(http, Metrics.build(CollectorRegistry()))
    try:
        replies = [await api.send_cancel(wf) for wf in ("wf_a", "wf_b", "wf_c")]
    finally:
        await http.aclose()
    assert [r.meaning.outcome for r in replies[:2] if isinstance(r.meaning, CancelResult)] == [
        "cancelled"
    ] * 2
    with pytest.raises(RateLimitedError) as caught:
        replies[2].result()
    seen = [r.rate_limit for r in replies]
    assert [(s.limit, s.remaining) for s in seen] == [(2, 1), (2, 0), (2, 0)]
    assert all(s.reset_after_s is not None and 0 < s.reset_after_s <= 30 for s in seen)
    assert caught.value.retry_after_s is not None
    assert 0 < caught.value.retry_after_s <= 30


async def test_compressed_answer_is_decoded() -> None:
    """A gzip-encoded answer is read as its JSON."""

    async def cancel(_request: web.Request) -> web.Response:
        body = gzip.compress(json.dumps({"id": "wf_gz", "status": "cancelled"}).encode())
        headers = {"Content-Encoding": "gzip", "Content-Type": "application/json"}
        return web.Response(body=body, headers=headers)

    async with serving("POST", "/v1/workflows/{id}/cancel", cancel) as base_url:
        http = session(f"{base_url}/v1")
        try:
            result = await DialNexaClient(http, Metrics.build(CollectorRegistry())).cancel("wf_gz")
        finally:
            await http.aclose()
    assert result == CancelResult("wf_gz", "cancelled", "cancelled")
