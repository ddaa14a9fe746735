"""Plumbing of the drills' own: a vhost of the run's own, worker processes in a run, metrics, and
reading /proc (the processes, waiting and events they share with the tests and benchmarks are in
`testkit`).

Everything binds or connects to loopback only. Every wait has a deadline.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import quote, urlsplit, urlunsplit

import aio_pika
import aiohttp
import aiormq
from aio_pika.abc import AbstractConnection

from testkit import HOST, ROOT, HarnessError, Proc, http_get, run_cmd, spawn_worker, wait_answering

RESULTS = ROOT / "drills" / "results"
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


# The drill itself could not run (not a violated invariant): a wait timed out, a process died.
DrillError = HarnessError


def base_amqp_url() -> str:
    """The broker to drill against: `CANCELLER_TEST_AMQP_URL` or the local one."""
    return os.environ.get("CANCELLER_TEST_AMQP_URL", DEFAULT_AMQP_URL)


def stamp() -> str:
    """A UTC timestamp for file names."""
    return f"{datetime.now(UTC):%Y%m%dT%H%M%S}"


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


async def start_worker(
    amqp_url: str, base_url: str, extra: dict[str, str], log_dir: Path, procs: list[Proc]
) -> Proc:
    """A worker process on a free port, put first in `procs` (stopped first), returned once its
    /readyz answers 200."""
    worker = await spawn_worker(amqp_url, base_url, extra, log_dir)
    procs.insert(0, worker)
    await wait_answering(worker, "/readyz")
    return worker


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
