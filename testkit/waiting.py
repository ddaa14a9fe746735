"""Waiting on a condition with a deadline, and free loopback ports."""

from __future__ import annotations

import asyncio
import inspect
import socket
import time
from collections.abc import Awaitable, Callable

HOST = "127.0.0.1"

Condition = Callable[[], bool | Awaitable[bool]]


class HarnessError(Exception):
    """A helper could not do its part: a wait timed out, a child process exited or did not answer
    (in a drill or benchmark: the run itself failed, not a violated invariant)."""


async def wait_until(
    condition: Condition, *, timeout_s: float = 10.0, what: str = "condition", interval_s: float = 0.02
) -> None:
    """Poll `condition` (sync or async) every `interval_s` until it holds; `HarnessError` naming
    `what` after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while True:
        result = condition()
        if inspect.isawaitable(result):
            result = await result
        if result:
            return
        if time.monotonic() > deadline:
            raise HarnessError(f"timed out after {timeout_s:g}s waiting for {what}")
        await asyncio.sleep(interval_s)


def free_port() -> int:
    """A TCP port that is free right now on loopback."""
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])
