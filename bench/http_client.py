"""Micro-benchmark of the HTTP client alone: cancel calls for S seconds, C in flight, to the simulator.

Clients: `httpx` (its default httpcore transport), `httpx-aiohttp` (httpx over httpx-aiohttp's
`AiohttpTransport`), `service` (the service's own `HttpSession` over its default transport, as the
worker builds it) and raw `aiohttp`. Each gets a fresh pool of C connections, a warm-up of C
calls, then calls for a fixed time (a count would take minutes where a client is slow); unique
workflow ids so every answer is a 200. Prints one JSON object: client -> {"rps", "requests", "errors"}.

python -m bench.http_client --base-url http://127.0.0.1:PORT/v1 --seconds 3 --concurrency 100
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
import uuid
from collections.abc import Awaitable, Callable

import aiohttp
import httpx
from httpx_aiohttp import AiohttpTransport

CLIENTS = ("httpx", "httpx-aiohttp", "service", "aiohttp")
Call = Callable[[str], Awaitable[int]]


async def _drive(
    call: Call, seconds: float, limit: int, concurrency: int, tag: str
) -> tuple[float, int, int]:
    """Calls from `concurrency` tasks until `seconds` pass or `limit` calls started.

    Returns (elapsed seconds, calls completed, non-200 answers)."""
    ids = iter(range(limit))
    done = errors = 0
    deadline = time.perf_counter() + seconds

    async def worker() -> None:
        nonlocal done, errors
        for n in ids:
            if time.perf_counter() > deadline:
                return
            if await call(f"workflows/wf_{tag}_{n}/cancel") != 200:
                errors += 1
            done += 1

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return time.perf_counter() - started, done, errors


async def bench_client(name: str, base_url: str, seconds: float, concurrency: int) -> dict[str, float]:
    headers = {"Authorization": "Bearer sim_key:sim_secret", "Accept": "application/json"}
    base = base_url.rstrip("/") + "/"
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    call: Call
    if name == "aiohttp":
        session = aiohttp.ClientSession(
            base_url=base, headers=headers, connector=aiohttp.TCPConnector(limit=concurrency)
        )

        async def call(path: str) -> int:
            async with session.post(path) as response:
                await response.read()
                return response.status

        close: Callable[[], Awaitable[None]] = session.close
    elif name == "service":
        from pydantic import SecretStr

        from service.dialnexa.http import AiohttpSession

        http = AiohttpSession(
            base,
            SecretStr("sim_key:sim_secret"),
            connect_timeout_s=5,
            read_timeout_s=15,
            max_connections=concurrency,
        )

        async def call(path: str) -> int:
            return (await http.request("POST", path)).status_code

        close = http.aclose
    else:
        transport = AiohttpTransport(limits=limits) if name == "httpx-aiohttp" else None
        client = httpx.AsyncClient(
            base_url=base, headers=headers, limits=limits, transport=transport, timeout=15
        )

        async def call(path: str) -> int:
            response = await client.post(path)
            return response.status_code

        close = client.aclose
    tag = uuid.uuid4().hex[:6]
    try:
        await _drive(call, 30, concurrency, concurrency, f"{tag}w")  # warm-up: open the pool
        elapsed, done, errors = await _drive(call, seconds, 10_000_000, concurrency, tag)
    finally:
        await close()
    return {"rps": done / elapsed, "requests": done, "seconds": elapsed, "errors": errors}


async def run(base_url: str, seconds: float, concurrency: int, clients: list[str]) -> dict[str, object]:
    return {name: await bench_client(name, base_url, seconds, concurrency) for name in clients}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--base-url", required=True)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--concurrency", type=int, default=100)
    parser.add_argument("--clients", default=",".join(CLIENTS))
    parser.add_argument("--loop", choices=("uvloop", "asyncio"), default="uvloop")
    args = parser.parse_args()
    coro = run(args.base_url, args.seconds, args.concurrency, args.clients.split(","))
    if args.loop == "uvloop":
        import uvloop

        result = uvloop.run(coro)
    else:
        result = asyncio.run(coro)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
