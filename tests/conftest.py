"""Shared fixtures: a real broker (own vhost), the DialNexa simulator on a real port, a worker.

The broker comes from `CANCELLER_TEST_AMQP_URL` (default: the local RabbitMQ). When rabbitmqctl is
available the session gets its own vhost; every test also gets uniquely named exchanges and queues.
Only when no broker answers and Docker exists is a throwaway RabbitMQ started with testcontainers.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import subprocess
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any
from urllib.parse import quote, urlsplit, urlunsplit

import pytest
from prometheus_client import CollectorRegistry

from service import app
from service.config import Settings
from service.simulator import Simulator
from testkit import simulator_in_process
from tests.support import BrokerProbe, free_port, wait_until

DEFAULT_AMQP_URL = "amqp://guest:guest@127.0.0.1:5672/"
API_KEY = "sim_key:sim_secret"


def _broker_answers(url: str) -> bool:
    async def probe() -> bool:
        import aio_pika

        try:
            connection = await aio_pika.connect(url, timeout=3)
        except Exception:  # noqa: BLE001  # any failure means "no broker here"
            return False
        await connection.close()
        return True

    return asyncio.run(probe())


def _rabbitmqctl(*args: str) -> None:
    subprocess.run(["rabbitmqctl", "-q", *args], check=True, capture_output=True, timeout=60)


@pytest.fixture(scope="session")
def base_amqp_url() -> Iterator[str]:
    """The broker for this run: the given or local one, else a testcontainers RabbitMQ."""
    import os

    url = os.environ.get("CANCELLER_TEST_AMQP_URL", DEFAULT_AMQP_URL)
    if _broker_answers(url):
        yield url
        return
    if shutil.which("docker") and subprocess.run(["docker", "info"], capture_output=True).returncode == 0:
        from testcontainers.rabbitmq import RabbitMqContainer  # type: ignore[import-not-found]

        with RabbitMqContainer("rabbitmq:3.13-management") as container:
            params = container.get_connection_params()
            yield f"amqp://guest:guest@{params.host}:{params.port}/"
        return
    pytest.fail(
        f"no RabbitMQ answers at {url} and no Docker engine to start one (set CANCELLER_TEST_AMQP_URL)"
    )


@pytest.fixture(scope="session")
def vhost(base_amqp_url: str) -> Iterator[str | None]:
    """A vhost of this test session's own (None when rabbitmqctl cannot make one)."""
    if not shutil.which("rabbitmqctl") or "CANCELLER_TEST_AMQP_URL" in __import__("os").environ:
        yield None
        return
    name = f"canceller-test-{uuid.uuid4().hex[:8]}"
    _rabbitmqctl("add_vhost", name)
    _rabbitmqctl("set_permissions", "-p", name, "guest", ".*", ".*", ".*")
    yield name
    with contextlib.suppress(subprocess.SubprocessError):
        _rabbitmqctl("delete_vhost", name)


@pytest.fixture(scope="session")
def amqp_url(base_amqp_url: str, vhost: str | None) -> str:
    """The broker URL the tests and workers use (pointing at the session's vhost)."""
    if vhost is None:
        return base_amqp_url
    parts = urlsplit(base_amqp_url)
    return urlunsplit(parts._replace(path="/" + quote(vhost, safe="")))


@pytest.fixture
async def simulator() -> AsyncIterator[tuple[Simulator, str]]:
    """The DialNexa simulator on a free local port: (state, base URL)."""
    async with simulator_in_process(api_key=API_KEY) as served:
        yield served


@pytest.fixture
def names() -> dict[str, str]:
    """Unique exchange and queue names for one test."""
    prefix = f"t{uuid.uuid4().hex[:10]}"
    return {
        "input_exchange": f"{prefix}.crm.events",
        "campaign_queue": f"{prefix}.campaign-ended",
        "complaint_queue": f"{prefix}.complaint-received",
        "output_exchange": f"{prefix}.workflow.events",
        "dead_letter_queue": f"{prefix}.dlq",
        "dead_letter_exchange": f"{prefix}.dead-letter",
        "requeue_exchange": f"{prefix}.requeue",
        "delay_queue_prefix": f"{prefix}.delay",
    }


@pytest.fixture
def make_settings(amqp_url: str, simulator: tuple[Simulator, str], names: dict[str, str]) -> Any:
    """Build Settings for a test worker; keyword arguments override the fast test defaults."""

    def build(**overrides: Any) -> Settings:
        values: dict[str, Any] = {
            "amqp_url": amqp_url,
            "dialnexa_base_url": simulator[1],
            "dialnexa_api_key": API_KEY,
            "http_port": free_port(),
            "http_host": "127.0.0.1",
            "retry_delays": (0.3, 0.6),
            "call_attempts": 2,
            "call_backoff_initial_s": 0.05,
            "call_backoff_max_s": 0.1,
            "auth_probe_initial_s": 0.1,
            "auth_probe_max_s": 0.3,
            "reconnect_initial_s": 0.1,
            "reconnect_max_s": 0.5,
            "drain_timeout_s": 5.0,
            "concurrency": 8,
            **names,
            **overrides,
        }
        return Settings(_env_file=None, **values)

    return build


class RunningWorker:
    """A worker running in this process, with its own metrics registry."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.registry = CollectorRegistry()
        self.stop_event = asyncio.Event()
        self.task: asyncio.Task[None] | None = None

    async def start(self) -> RunningWorker:
        self.task = asyncio.create_task(app.run(self.settings, self.registry, self.stop_event))
        await wait_until(self.ready, timeout_s=15, what="worker ready")
        return self

    async def ready(self) -> bool:
        return self.metric("canceller_ready") == 1.0

    def metric(self, name: str, **labels: str) -> float:
        value = self.registry.get_sample_value(name, labels)
        return 0.0 if value is None else value

    async def stop(self) -> None:
        self.stop_event.set()
        if self.task is not None:
            await asyncio.wait_for(self.task, 30)


@pytest.fixture
async def start_worker(make_settings: Any) -> AsyncIterator[Any]:
    """Start in-process workers (`await start_worker(**overrides)`); all are stopped afterwards."""
    workers: list[RunningWorker] = []

    async def start(**overrides: Any) -> RunningWorker:
        worker = RunningWorker(make_settings(**overrides))
        workers.append(worker)
        return await worker.start()

    yield start
    for worker in workers:
        await worker.stop()


@pytest.fixture
async def broker(amqp_url: str, names: dict[str, str]) -> AsyncIterator[BrokerProbe]:
    """The test's own view of the broker: publish inputs, collect outputs, read the DLQ."""
    probe = BrokerProbe(amqp_url, names)
    await probe.open()
    yield probe
    await probe.close()
