"""The worker as a real process: configuration errors, signals, SIGKILL, and what reaches its logs."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest

from service.config import Settings
from tests.support import BrokerProbe, campaign, complaint, wait_until, wf_ids

pytestmark = pytest.mark.timeout(90)


def _env(settings: Settings, **extra: str) -> dict[str, str]:
    """The environment that configures a worker process exactly like `settings`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CANCELLER_")}
    for field, value in settings.model_dump().items():
        if value is None:
            continue
        if isinstance(value, tuple):
            text = ",".join(str(v) for v in value)
        elif hasattr(value, "get_secret_value"):
            text = value.get_secret_value()
        else:
            text = str(value)
        env[f"CANCELLER_{field.upper()}"] = text
    env.update(extra)
    return env


class WorkerProcess:
    """`python -m service run` as a child process, its output collected."""

    def __init__(self, env: dict[str, str], cwd: Path) -> None:
        self.env = env
        self.cwd = cwd
        self.proc: asyncio.subprocess.Process | None = None
        self.output = bytearray()
        self._reader: asyncio.Task[None] | None = None

    async def start(self) -> WorkerProcess:
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "service", "run",
            env=self.env, cwd=self.cwd,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        )  # fmt: skip
        self._reader = asyncio.create_task(self._read())
        return self

    async def _read(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        while chunk := await self.proc.stdout.read(65536):
            self.output.extend(chunk)

    async def ready(self) -> bool:
        port = self.env["CANCELLER_HTTP_PORT"]
        try:
            async with httpx.AsyncClient() as client:
                return (await client.get(f"http://127.0.0.1:{port}/readyz")).status_code == 200
        except httpx.TransportError:
            return False

    def signal(self, signum: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(signum)

    async def wait(self, timeout_s: float = 30) -> int:
        assert self.proc is not None and self._reader is not None
        code = await asyncio.wait_for(self.proc.wait(), timeout_s)
        await self._reader
        return code

    async def kill(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.kill()
            await self.wait()


@pytest.fixture
async def spawn(make_settings: Any) -> Any:
    """Start worker processes configured like the in-process ones; all are killed afterwards."""
    procs: list[WorkerProcess] = []
    root = Path(__file__).parent.parent  # the project root, where `python -m service` resolves

    async def start(settings: Settings | None = None, **extra: str) -> WorkerProcess:
        proc = WorkerProcess(_env(settings or make_settings(), **extra), root)
        procs.append(proc)
        await proc.start()
        await wait_until(proc.ready, timeout_s=20, what="worker process ready")
        return proc

    yield start
    for proc in procs:
        await proc.kill()


def _run_once(env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    """`python -m service run` to completion (it exits at once on bad configuration)."""
    return subprocess.run(
        [sys.executable, "-m", "service", "run"], env=env, cwd=cwd, capture_output=True, text=True, timeout=30
    )


def test_missing_configuration_exits_2_naming_each_variable(tmp_path: Path) -> None:
    """Bad configuration: exit code 2, one line per problem naming the variable, no traceback."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CANCELLER_")}
    env |= {"CANCELLER_HTTP_PORT": "http", "CANCELLER_RETRY_DELAYS": "1,x", "CANCELLER_LOG_FORMAT": "xml"}
    result = _run_once(env, tmp_path)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 4, lines
    for variable in ("DIALNEXA_API_KEY", "HTTP_PORT", "RETRY_DELAYS", "LOG_FORMAT"):
        assert any(f"CANCELLER_{variable}:" in line for line in lines), variable
    assert "Traceback" not in result.stderr


def test_env_file_is_read(tmp_path: Path) -> None:
    """Settings come from a .env file in the working directory too (its bad value is reported)."""
    (tmp_path / ".env").write_text("CANCELLER_DIALNEXA_API_KEY=key:secret\nCANCELLER_CONCURRENCY=0\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("CANCELLER_")}
    result = _run_once(env, tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "configuration error: CANCELLER_CONCURRENCY: Input should be greater than or equal to 1"
    ]


@pytest.mark.broker
async def test_sigterm_mid_call_drains_and_exits_0(simulator: Any, broker: BrokerProbe, spawn: Any) -> None:
    """SIGTERM while a call is in flight: the call finishes, its event is published, exit code 0."""
    sim, _ = simulator
    sim.config.latency_s = 1.0
    proc = await spawn()
    wf = wf_ids(1)[0]
    await broker.publish(campaign([wf]))
    await wait_until(lambda: sim.inflight == 1, what="a call in flight")
    proc.signal(signal.SIGTERM)
    assert await proc.wait() == 0
    await wait_until(lambda: broker.output_ids() == {wf}, what="the output published during the drain")
    assert b"service.stopped" in proc.output
    assert await broker.depth(broker.names["campaign_queue"]) == 0


@pytest.mark.broker
async def test_sigterm_past_drain_time_requeues(
    simulator: Any, broker: BrokerProbe, spawn: Any, make_settings: Any
) -> None:
    """A call outlasting the drain time is abandoned: exit 0, and the message is back in its queue."""
    sim, _ = simulator
    sim.config.latency_s = 5.0
    proc = await spawn(make_settings(drain_timeout_s=0.5))
    await broker.publish(campaign(wf_ids(1)))
    await wait_until(lambda: sim.inflight == 1, what="a call in flight")
    proc.signal(signal.SIGINT)
    assert await proc.wait(timeout_s=10) == 0
    assert broker.outputs == []
    await wait_until(lambda: broker.has_depth(broker.names["campaign_queue"], 1), what="message requeued")


@pytest.mark.broker
async def test_sigkill_mid_call_loses_nothing(simulator: Any, broker: BrokerProbe, spawn: Any) -> None:
    """SIGKILL with calls in flight, then a restart: every workflow ends up cancelled and published."""
    sim, _ = simulator
    sim.config.latency_s = 0.3
    proc = await spawn()
    ids = wf_ids(20)
    for wf in ids:
        await broker.publish(campaign([wf]))
    await wait_until(lambda: sim.inflight >= 1 and len(broker.outputs) >= 2, what="work under way")
    proc.signal(signal.SIGKILL)
    assert await proc.wait() == -signal.SIGKILL
    assert broker.output_ids() != set(ids)

    sim.config.latency_s = 0.0
    await spawn()
    await wait_until(
        lambda: broker.output_ids() == set(ids), timeout_s=30, what="every workflow after restart"
    )
    await wait_until(lambda: broker.has_depth(broker.names["campaign_queue"], 0), what="queue drained")


@pytest.mark.broker
async def test_no_secret_or_phone_number_in_debug_logs(
    simulator: Any, broker: BrokerProbe, spawn: Any
) -> None:
    """At DEBUG, across success, retry, 401 and a poison message, neither the key nor a phone appears."""
    sim, _ = simulator
    phone = "+15557654321"
    proc = await spawn(CANCELLER_LOG_LEVEL="DEBUG")
    await broker.watch_dlq()
    ok, flaky = wf_ids(1)[0], wf_ids(1, "flaky")[0]
    sim.script(flaky, [503])
    await broker.publish(complaint([ok, flaky], phone=phone))
    await broker.publish(
        b'{"type": "complaint-received", "data": {"phone_number": "' + phone.encode() + b'"}}'
    )
    await wait_until(lambda: broker.output_ids() == {ok, flaky} and len(broker.dead) == 1)
    sim.config.api_key = "sim_key:other"
    await broker.publish(complaint(wf_ids(1), phone=phone))
    await wait_until(lambda: b"consumer.paused" in proc.output, what="the 401 path logged")
    proc.signal(signal.SIGTERM)
    assert await proc.wait() == 0

    text = proc.output.decode()
    records = [json.loads(line) for line in text.splitlines()]  # one JSON object per line
    assert any(r["level"] == "debug" for r in records)  # DEBUG really was on
    assert "sim_secret" not in text
    assert "sim_key:sim_secret" not in text
    assert phone not in text and phone.lstrip("+") not in text
    assert "guest:guest" not in text


@pytest.mark.broker
async def test_every_workflow_outcome_is_logged_at_info_with_its_ids(
    simulator: Any, broker: BrokerProbe, spawn: Any
) -> None:
    """At the default level, each workflow's outcome (cancelled, already terminal, not found,
    failed) is one line naming its workflow_id and the trigger's event_id."""
    sim, _ = simulator
    proc = await spawn()
    await broker.watch_dlq()
    cancelled, terminal, missing, failing = "wf_log_ok", "wf_log_done", "wf_log_missing", "wf_log_bad"
    sim.script(terminal, [409])
    sim.script(failing, [422])
    await broker.publish(campaign([cancelled, terminal, missing, failing], event_id="evt_log_1"))
    await wait_until(lambda: len(broker.dead) == 1, what="the failed workflow dead-lettered")
    proc.signal(signal.SIGTERM)
    assert await proc.wait() == 0

    records = [json.loads(line) for line in proc.output.decode().splitlines()]
    outcomes = {
        r["workflow_id"]: (r["event"], r.get("outcome") or r.get("reason"), r["level"])
        for r in records
        if r.get("event_id") == "evt_log_1" and r["event"] in ("workflow.settled", "workflow.failed")
    }
    assert outcomes == {
        cancelled: ("workflow.settled", "cancelled", "info"),
        terminal: ("workflow.settled", "already_terminal", "info"),
        missing: ("workflow.settled", "not_found", "info"),
        failing: ("workflow.failed", "permanent", "info"),
    }


@pytest.mark.skipif(
    os.geteuid() != 0 or not shutil.which("unshare"), reason="needs a network namespace of its own"
)
def test_run_without_a_broker_says_how_to_get_one() -> None:
    """`make run`'s script, where no RabbitMQ answers (an empty network namespace): exit 1 with how
    to start the compose broker, instead of reconnecting forever."""
    root = Path(__file__).parent.parent
    env = {k: v for k, v in os.environ.items() if not k.startswith("CANCELLER_")}
    done = subprocess.run(
        ["unshare", "-n", "bash", "scripts/run-local.sh"],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 1
    assert "docker compose up -d rabbitmq" in done.stderr
