"""Plumbing shared by the drills: a vhost of the run's own, child processes (simulator, workers),
the simulator's control API, reading /proc, and waiting on conditions with deadlines.

Everything binds or connects to loopback only. Every wait has a deadline.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
import os
import shutil
import signal
import socket
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit, urlunsplit

import aio_pika
import aiohttp
import aiormq
from aio_pika.abc import AbstractConnection

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "drills" / "results"
PYTHON = sys.executable
HOST = "127.0.0.1"
API_KEY = "sim_key:sim_secret"
DEFAULT_AMQP_URL = "amqp://guest:guest@127.0.0.1:5672/"


# What a broker cut can raise in a client: aiormq raises a plain RuntimeError for a channel opened
# on a closed connection and ChannelInvalidStateError (a RuntimeError) for a closed channel.
BROKER_ERRORS = (
    aiormq.exceptions.AMQPError,
    aio_pika.exceptions.AMQPException,
    RuntimeError,
    OSError,
    TimeoutError,
)


class DrillError(Exception):
    """The drill itself could not run (not a violated invariant)."""


def base_amqp_url() -> str:
    """The broker to drill against: `CANCELLER_TEST_AMQP_URL` or the local one."""
    return os.environ.get("CANCELLER_TEST_AMQP_URL", DEFAULT_AMQP_URL)


def free_port() -> int:
    """A TCP port free right now on loopback."""
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def stamp() -> str:
    """A UTC timestamp for file names."""
    return f"{datetime.now(UTC):%Y%m%dT%H%M%S}"


async def wait_for(
    condition: Callable[[], bool | Awaitable[bool]],
    *,
    timeout_s: float,
    what: str,
    interval_s: float = 0.1,
) -> None:
    """Poll `condition` until it holds; `DrillError` naming `what` after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while True:
        result = condition()
        if inspect.isawaitable(result):
            result = await result
        if result:
            return
        if time.monotonic() > deadline:
            raise DrillError(f"timed out after {timeout_s:.0f}s waiting for {what}")
        await asyncio.sleep(interval_s)


async def run_cmd(*argv: str, timeout_s: float = 60) -> tuple[int, str]:
    """Run a command; (exit code, stdout+stderr)."""
    if shutil.which(argv[0]) is None:
        raise DrillError(f"{argv[0]} not found on PATH")
    proc = await asyncio.create_subprocess_exec(
        *argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
    )
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), timeout_s)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        return 124, f"{argv[0]} timed out"
    return proc.returncode or 0, out.decode(errors="replace").strip()


class Vhost:
    """A RabbitMQ vhost of this run's own (guest may do anything in it), deleted on exit."""

    def __init__(self, prefix: str) -> None:
        self.name = f"{prefix}-{uuid.uuid4().hex[:8]}"
        parts = urlsplit(base_amqp_url())
        self.url = urlunsplit(parts._replace(path="/" + quote(self.name, safe="")))
        self._created = False

    async def __aenter__(self) -> Vhost:
        await self._ctl("add_vhost", self.name)
        self._created = True
        await self._ctl("set_permissions", "-p", self.name, "guest", ".*", ".*", ".*")
        return self

    async def __aexit__(self, *_: object) -> None:
        if self._created:
            await run_cmd("rabbitmqctl", "-q", "delete_vhost", self.name, timeout_s=120)

    async def close_all_connections(self, reason: str) -> None:
        """Cut every client connection of this vhost, and only of this vhost."""
        await self._ctl("close_all_connections", "-p", self.name, reason)

    async def _ctl(self, *args: str) -> None:
        code, out = await run_cmd("rabbitmqctl", "-q", *args)
        if code != 0:
            raise DrillError(f"rabbitmqctl {args[0]} failed ({code}): {out[-300:]}")


async def connect(url: str) -> AbstractConnection:
    """A plain (not robust) broker connection."""
    return await aio_pika.connect(url, timeout=10)


async def queue_depth(connection: AbstractConnection, queue: str) -> int:
    """Ready messages in `queue` (passive declare on a throwaway channel)."""
    channel = await connection.channel()
    try:
        underlay = await channel.get_underlay_channel()
        result = await underlay.queue_declare(queue, passive=True)
        return int(result.message_count or 0)
    finally:
        with contextlib.suppress(Exception):
            await channel.close()


# --- processes ---------------------------------------------------------------------------------


@dataclass
class Proc:
    """A child process with its log file (and HTTP port, when it serves one); bench uses it too."""

    name: str
    process: asyncio.subprocess.Process
    log_path: Path
    port: int | None = None

    @property
    def pid(self) -> int:
        return int(self.process.pid)

    @property
    def alive(self) -> bool:
        return self.process.returncode is None

    def log_tail(self, lines: int = 5) -> str:
        with contextlib.suppress(OSError):
            tail = self.log_path.read_text(errors="replace").strip().splitlines()[-lines:]
            return " | ".join(tail)[-800:]
        return ""

    async def kill(self) -> int | None:
        """SIGKILL (no chance to clean up) and reap."""
        if self.alive:
            with contextlib.suppress(ProcessLookupError):
                self.process.kill()
        await self.process.wait()
        return self.process.returncode

    async def stop(self, timeout_s: float = 30, sig: int = signal.SIGTERM) -> int | None:
        """`sig` (SIGTERM), then SIGKILL after `timeout_s`; the exit code."""
        if self.alive:
            with contextlib.suppress(ProcessLookupError):
                self.process.send_signal(sig)
            try:
                await asyncio.wait_for(self.process.wait(), timeout_s)
            except TimeoutError:
                return await self.kill()
        return self.process.returncode


async def spawn(
    name: str, argv: list[str], env: dict[str, str], log_dir: Path, port: int | None = None
) -> Proc:
    """Start `argv` in the project root with a clean `CANCELLER_*` environment plus `env`."""
    log_dir.mkdir(parents=True, exist_ok=True)  # noqa: ASYNC240  # once per process start
    log_path = log_dir / f"{name}.log"
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("CANCELLER_")}
    full_env.update(env)
    with log_path.open("ab") as log:
        process = await asyncio.create_subprocess_exec(
            *argv, cwd=ROOT, env=full_env, stdout=log, stderr=asyncio.subprocess.STDOUT
        )
    return Proc(name, process, log_path, port)


async def http_get(url: str, timeout_s: float = 5) -> tuple[int, Any]:
    """GET a URL: (status, JSON body or text)."""
    timeout = aiohttp.ClientTimeout(total=timeout_s)
    async with aiohttp.ClientSession(timeout=timeout) as session, session.get(url) as response:
        text = await response.text()
        with contextlib.suppress(ValueError):
            return response.status, json.loads(text)
        return response.status, text


async def http_post(url: str, body: Any, timeout_s: float = 10) -> Any:
    """POST JSON, expect 200, return the JSON answer."""
    timeout = aiohttp.ClientTimeout(total=timeout_s)
    async with aiohttp.ClientSession(timeout=timeout) as session, session.post(url, json=body) as response:
        if response.status != 200:
            raise DrillError(f"POST {url}: {response.status} {(await response.text())[:300]}")
        return await response.json()


async def answers_200(port: int, path: str) -> bool:
    """Whether http://127.0.0.1:port/path answers 200 right now."""
    with contextlib.suppress(aiohttp.ClientError, TimeoutError, OSError):
        status, _ = await http_get(f"http://{HOST}:{port}{path}", timeout_s=1)
        return status == 200
    return False


class SimProcess:
    """The DialNexa simulator as its own process (`python -m service.simulator`)."""

    def __init__(self, proc: Proc) -> None:
        self.proc = proc
        self.base_url = f"http://{HOST}:{proc.port}/v1"
        self.control = f"http://{HOST}:{proc.port}/_sim"

    @classmethod
    async def start(cls, log_dir: Path, *flags: str) -> SimProcess:
        port = free_port()
        argv = [PYTHON, "-m", "service.simulator", "--host", HOST, "--port", str(port), *flags]
        proc = await spawn("simulator", argv, {}, log_dir, port)
        sim = cls(proc)
        await wait_for(sim._healthy, timeout_s=30, what="the simulator answering /healthz")
        return sim

    async def _healthy(self) -> bool:
        if not self.proc.alive:
            raise DrillError(f"simulator exited: {self.proc.log_tail()}")
        assert self.proc.port is not None  # noqa: S101  # set by start()
        return await answers_200(self.proc.port, "/healthz")

    async def configure(self, **config: Any) -> Any:
        return await http_post(f"{self.control}/config", config)

    async def reset(self) -> None:
        """Forget workflows, scripts, calls, counters and the rate window; keep the config."""
        await http_post(f"{self.control}/reset", {})

    async def set_workflows(self, statuses: dict[str, str]) -> None:
        await http_post(f"{self.control}/workflows", statuses, timeout_s=60)

    async def workflows(self) -> dict[str, str]:
        _, body = await http_get(f"{self.control}/workflows", timeout_s=60)
        if not isinstance(body, dict):
            raise DrillError("simulator: /_sim/workflows did not answer an object")
        return body

    async def stats(self) -> dict[str, Any]:
        _, body = await http_get(f"{self.control}/stats")
        if not isinstance(body, dict):
            raise DrillError("simulator: /_sim/stats did not answer an object")
        return body


async def start_worker(
    amqp_url: str, base_url: str, extra: dict[str, str], log_dir: Path, procs: list[Proc]
) -> Proc:
    """A worker process (`python -m service run`) on a free port, put first in `procs` (stopped
    first), returned once its /readyz answers 200."""
    port = free_port()
    env = worker_env(amqp_url, base_url, port, extra)
    worker = await spawn("worker", [PYTHON, "-m", "service", "run"], env, log_dir, port)
    procs.insert(0, worker)

    async def ready() -> bool:
        if not worker.alive:
            raise DrillError(f"worker exited with {worker.process.returncode}: {worker.log_tail()}")
        return await answers_200(port, "/readyz")

    await wait_for(ready, timeout_s=60, what="the worker ready")
    return worker


def worker_env(amqp_url: str, base_url: str, port: int, extra: dict[str, str]) -> dict[str, str]:
    """The environment of one worker process (the contract's default names, in the run's vhost)."""
    return {
        "CANCELLER_AMQP_URL": amqp_url,
        "CANCELLER_DIALNEXA_BASE_URL": base_url,
        "CANCELLER_DIALNEXA_API_KEY": API_KEY,
        "CANCELLER_HTTP_HOST": HOST,
        "CANCELLER_HTTP_PORT": str(port),
        "CANCELLER_LOG_LEVEL": "WARNING",
        **extra,
    }


async def metrics(port: int) -> dict[str, float]:
    """A worker's /metrics as {"name{labels}": value} (empty when it does not answer)."""
    try:
        status, text = await http_get(f"http://{HOST}:{port}/metrics", timeout_s=3)
    except (aiohttp.ClientError, TimeoutError, OSError):
        return {}
    if status != 200 or not isinstance(text, str):
        return {}
    values: dict[str, float] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            with contextlib.suppress(ValueError):
                values[name] = float(value)
    return values


def metric_sum(values: dict[str, float], name: str) -> float:
    """The sum of every sample of `name` (all label sets)."""
    return sum(v for k, v in values.items() if k == name or k.startswith(name + "{"))


# --- /proc -------------------------------------------------------------------------------------


def proc_status(pid: int) -> dict[str, int]:
    """VmRSS, VmHWM (KiB) and Threads of a process (empty once it is gone)."""
    values: dict[str, int] = {}
    with contextlib.suppress(OSError), open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith(("VmRSS:", "VmHWM:", "Threads:")):
                key, value = line.split(":", 1)
                values[key] = int(value.split()[0])
    return values


def open_fds(pid: int) -> int | None:
    """How many file descriptors a process has open (None once it is gone)."""
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return None


def sockets_to(pid: int, remote_port: int) -> int:
    """How many of a process's open fds are TCP sockets connected to `remote_port` (any host)."""
    inodes: set[str] = set()
    for table in ("tcp", "tcp6"):
        with contextlib.suppress(OSError), open(f"/proc/{pid}/net/{table}") as rows:
            next(rows, None)  # header
            for row in rows:
                cols = row.split()
                if len(cols) > 9 and int(cols[2].rpartition(":")[2], 16) == remote_port:
                    inodes.add(cols[9])
    count = 0
    with contextlib.suppress(OSError):
        for fd in os.listdir(f"/proc/{pid}/fd"):
            with contextlib.suppress(OSError):
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
                if target.startswith("socket:[") and target[8:-1] in inodes:
                    count += 1
    return count


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds a process has used so far (0 once it is gone)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            fields = stat.read().rpartition(")")[2].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def machine_busy_seconds() -> float:
    """CPU seconds every core has spent busy since boot (from /proc/stat)."""
    with open("/proc/stat") as stat:
        values = [int(v) for v in stat.readline().split()[1:]]
    idle = values[3] + (values[4] if len(values) > 4 else 0)
    return (sum(values[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def machine() -> str:
    """A one-line description of this machine: cores, memory, kernel."""
    mem_kib = 0
    with contextlib.suppress(OSError), open("/proc/meminfo") as meminfo:
        for line in meminfo:
            if line.startswith("MemTotal:"):
                mem_kib = int(line.split()[1])
    uname = os.uname()
    return f"{os.cpu_count()} cores, {mem_kib / 1024 / 1024:.1f} GiB RAM, {uname.sysname} {uname.release}"
