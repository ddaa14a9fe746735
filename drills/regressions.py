"""Reproductions of defects the chaos drill found, each made deterministic; exit 1 while one persists.

    python -m drills.regressions

1. `closed-channel-publish`: a broker cut closes the publisher's channel while messages are in
   flight; publishing on it raises aiormq's `ChannelInvalidStateError`, a `RuntimeError` that
   `service.broker.intake.BROKER_ERRORS` does not include. The worker then logs the cut as
   `event.internal_error` and the settle step's exception escapes the message task.
2. `cut-during-setup`: a broker cut after the worker connected but before it consumes (while it
   declares its topology and opens channels) makes `connection.channel()` raise a plain
   `RuntimeError`, which `Worker.run` does not catch: the worker stops instead of reconnecting.

Real broker (a vhost of this run's own), real simulator, real `rabbitmqctl close_all_connections`.
In the second check the only artifice is the timing: the cut is made right after the worker's
first topology declaration, inside the window a real cut can also hit.
"""

from __future__ import annotations

import asyncio
import contextlib
from datetime import UTC, datetime
from typing import Any

import aio_pika
from aio_pika.abc import AbstractChannel
from prometheus_client import CollectorRegistry
from pydantic import SecretStr

from drills.common import Vhost
from testkit import HOST, free_port, simulator_in_process, wait_until
from testkit.processes import API_KEY


async def closed_channel_publish(vhost: Vhost) -> str | None:
    """None when publishing on a channel closed by a cut raises an error the worker treats as one."""
    from service.broker.connection import BROKER_ERRORS
    from service.broker.publisher import Publisher

    connection = await aio_pika.connect(vhost.url)
    channel = await connection.channel(publisher_confirms=True, on_return_raises=True)
    exchange = await channel.declare_exchange("regressions.output", "topic", auto_delete=True)
    publisher = Publisher(channel, exchange, exchange, output_routing_key="k", timeout_s=5)
    await vhost.close_all_connections("regressions")
    await wait_until(lambda: channel.is_closed, timeout_s=10, what="the cut reaching the client")
    try:
        await publisher._publish_cancelled(b"{}", "id", datetime.now(UTC))  # the raw publish is the point
    except BROKER_ERRORS:
        return None
    except Exception as error:  # noqa: BLE001  # the point: which errors escape the broker-error net
        return f"{type(error).__name__} (a {type(error).__mro__[1].__name__}) is not in BROKER_ERRORS"
    finally:
        with contextlib.suppress(Exception):
            await connection.close()
    return "publishing on a closed channel raised nothing"


async def cut_during_setup(vhost: Vhost) -> str | None:
    """None when the worker survives a cut during its session setup and keeps running."""
    from service import app
    from service.broker import topology
    from service.config import Settings

    async with simulator_in_process() as (_, base_url):
        real_declare = topology.declare
        cut = False

        async def declare_then_cut(channel: AbstractChannel, settings: Settings) -> Any:
            nonlocal cut
            exchanges = await real_declare(channel, settings)
            if not cut:
                cut = True
                await vhost.close_all_connections("regressions")
                await wait_until(lambda: channel.is_closed, timeout_s=10, what="the cut reaching the worker")
            return exchanges

        settings = Settings(
            _env_file=None,  # type: ignore[call-arg]  # pydantic-settings' init-only option
            amqp_url=SecretStr(vhost.url),
            dialnexa_base_url=base_url,  # type: ignore[arg-type]  # validated into a URL
            dialnexa_api_key=SecretStr(API_KEY),
            http_port=free_port(),
            http_host=HOST,
            reconnect_initial_s=0.1,
        )
        topology.declare = declare_then_cut  # the worker declares at every connect
        stop = asyncio.Event()
        task = asyncio.create_task(app.run(settings, CollectorRegistry(), stop))
        try:
            done, _ = await asyncio.wait({task}, timeout=8)
            if not done:
                return None  # still running after the cut: it reconnected
            error = task.exception()
            return f"the worker stopped: {type(error).__name__}: {error}" if error else "the worker returned"
        finally:
            topology.declare = real_declare
            stop.set()
            with contextlib.suppress(BaseException):
                await asyncio.wait_for(task, 30)


async def run_all() -> dict[str, str | None]:
    """Each check's finding (None: fixed)."""
    findings: dict[str, str | None] = {}
    for name, check in (
        ("closed-channel-publish", closed_channel_publish),
        ("cut-during-setup", cut_during_setup),
    ):
        async with Vhost("canceller-regressions") as vhost:
            findings[name] = await check(vhost)
    return findings


def main() -> int:
    """Run every check; print OK or the defect; exit 1 if one persists."""
    import logging

    for noisy in ("aiormq", "aio_pika", "workflow_canceller"):
        logging.getLogger(noisy).setLevel(logging.CRITICAL)
    findings = asyncio.run(run_all())
    for name, finding in findings.items():
        print(f"{name}: {'OK' if finding is None else 'DEFECT: ' + finding}")
    return 1 if any(findings.values()) else 0


if __name__ == "__main__":
    raise SystemExit(main())
