"""Helpers for long-lived broker sessions, shared by the worker and the webhook ingress."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import structlog
from aio_pika.abc import AbstractConnection

from .broker import BROKER_ERRORS

log = structlog.get_logger("workflow_canceller.supervision")


def short(error: BaseException) -> str:
    """A one-line, bounded description of an error for logs and headers."""
    return f"{type(error).__name__}: {error}"[:200]


async def sleep_unless(stop: asyncio.Event, seconds: float) -> None:
    """Sleep up to `seconds`, waking early when `stop` is set."""
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), seconds)


async def first(*waitables: asyncio.Event | asyncio.Future[Any]) -> asyncio.Event | asyncio.Future[Any]:
    """Wait until one of the events is set (or the future done); return which."""
    tasks: dict[asyncio.Future[Any], asyncio.Event | asyncio.Future[Any]] = {}
    for waitable in waitables:
        future = asyncio.ensure_future(waitable.wait()) if isinstance(waitable, asyncio.Event) else waitable
        tasks[future] = waitable
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for future, waitable in tasks.items():
            if future is not waitable:
                future.cancel()
    return tasks[next(iter(done))]


async def close_quietly(connection: AbstractConnection) -> None:
    """Close within 5 s; a connection the broker already closed is not an error."""
    try:
        await asyncio.wait_for(connection.close(), 5)
    except (*BROKER_ERRORS, RuntimeError) as error:  # closing twice is harmless
        log.debug("broker.close_failed", error=short(error))
