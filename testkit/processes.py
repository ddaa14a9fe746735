"""Child processes with their log files: the DialNexa simulator (`python -m service.simulator`) and
workers (`python -m service run`); the simulator in this process too, and small HTTP helpers."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

from testkit.waiting import HOST, HarnessError, free_port, wait_until

ROOT = Path(__file__).resolve().parent.parent
PYTHON = sys.executable
API_KEY = "sim_key:sim_secret"
LISTENING = "dialnexa-simulator listening on "


@dataclass
class Proc:
    """A child process with its log file (and HTTP port, when it serves one)."""

    name: str
    process: asyncio.subprocess.Process
    log_path: Path
    port: int | None = None
    log_start: int = 0  # where this process's output begins in its (appended) log file

    @property
    def pid(self) -> int:
        return int(self.process.pid)

    @property
    def alive(self) -> bool:
        return self.process.returncode is None

    def log_text(self) -> str:
        """What this process has written to its log so far."""
        with contextlib.suppress(OSError), self.log_path.open("rb") as log:
            log.seek(self.log_start)
            return log.read().decode(errors="replace")
        return ""

    def log_tail(self, lines: int = 5) -> str:
        return " | ".join(self.log_text().strip().splitlines()[-lines:])[-800:]

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
    name: str,
    argv: list[str],
    env: dict[str, str],
    log_dir: Path,
    port: int | None = None,
    log_name: str | None = None,
) -> Proc:
    """Start `argv` in the project root with a clean `CANCELLER_*` environment plus `env`, its output
    appended to `log_dir`/`log_name` (default: the name, `.log`)."""
    log_dir.mkdir(parents=True, exist_ok=True)  # noqa: ASYNC240  # once per process start
    log_path = log_dir / (log_name or f"{name}.log")
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("CANCELLER_")}
    full_env.update(env)
    with log_path.open("ab") as log:
        start = log.tell()
        process = await asyncio.create_subprocess_exec(
            *argv, cwd=ROOT, env=full_env, stdout=log, stderr=asyncio.subprocess.STDOUT
        )
    return Proc(name, process, log_path, port, start)


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
            raise HarnessError(f"POST {url}: {response.status} {(await response.text())[:300]}")
        return await response.json()


async def answers_200(port: int, path: str) -> bool:
    """Whether http://127.0.0.1:port/path answers 200 right now."""
    with contextlib.suppress(aiohttp.ClientError, TimeoutError, OSError):
        status, _ = await http_get(f"http://{HOST}:{port}{path}", timeout_s=1)
        return status == 200
    return False


async def wait_answering(proc: Proc, path: str = "/readyz", timeout_s: float = 60) -> float:
    """Wait until `proc` answers 200 on `path`; the seconds waited. `HarnessError` if it exits first."""
    started = asyncio.get_running_loop().time()

    async def answering() -> bool:
        if not proc.alive:
            raise HarnessError(f"{proc.name} exited with {proc.process.returncode}: {proc.log_tail()}")
        assert proc.port is not None  # noqa: S101  # only processes that serve HTTP are waited on
        return await answers_200(proc.port, path)

    await wait_until(answering, timeout_s=timeout_s, what=f"{proc.name} answering 200 on {path}")
    return asyncio.get_running_loop().time() - started


def worker_env(amqp_url: str, base_url: str, port: int, extra: dict[str, str]) -> dict[str, str]:
    """The environment of one worker process (the contract's default names unless `extra` says)."""
    return {
        "CANCELLER_AMQP_URL": amqp_url,
        "CANCELLER_DIALNEXA_BASE_URL": base_url,
        "CANCELLER_DIALNEXA_API_KEY": API_KEY,
        "CANCELLER_HTTP_HOST": HOST,
        "CANCELLER_HTTP_PORT": str(port),
        "CANCELLER_LOG_LEVEL": "WARNING",
        **extra,
    }


async def spawn_worker(
    amqp_url: str,
    base_url: str,
    extra: dict[str, str],
    log_dir: Path,
    name: str = "worker",
    log_name: str | None = None,
) -> Proc:
    """A worker process (`python -m service run`) on a free port; not yet waited on
    (`wait_answering`)."""
    port = free_port()
    env = worker_env(amqp_url, base_url, port, extra)
    return await spawn(name, [PYTHON, "-m", "service", "run"], env, log_dir, port, log_name)


class SimProcess:
    """The DialNexa simulator as its own process (`python -m service.simulator`): it picks its own
    port and says which in its first line; `control` is its `/_sim` API."""

    def __init__(self, proc: Proc, base_url: str) -> None:
        self.proc = proc
        self.base_url = base_url
        self.root = base_url.removesuffix("/v1")
        self.control = f"{self.root}/_sim"

    @classmethod
    async def start(cls, log_dir: Path, *flags: str) -> SimProcess:
        argv = [PYTHON, "-m", "service.simulator", "--host", HOST, "--port", "0", *flags]
        proc = await spawn("simulator", argv, {}, log_dir)
        base_url = ""

        def listening() -> bool:
            nonlocal base_url
            if not proc.alive:
                raise HarnessError(f"simulator exited with {proc.process.returncode}: {proc.log_tail()}")
            first = proc.log_text().partition("\n")[0]
            base_url = first.removeprefix(LISTENING) if first.startswith(LISTENING) else ""
            return bool(base_url)

        await wait_until(listening, timeout_s=30, what="the simulator's listening line")
        proc.port = int(base_url.removesuffix("/v1").rpartition(":")[2])
        sim = cls(proc, base_url)
        await wait_answering(proc, "/healthz", timeout_s=30)
        return sim

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
            raise HarnessError("simulator: /_sim/workflows did not answer an object")
        return body

    async def stats(self) -> dict[str, Any]:
        _, body = await http_get(f"{self.control}/stats")
        if not isinstance(body, dict):
            raise HarnessError("simulator: /_sim/stats did not answer an object")
        return body


@contextlib.asynccontextmanager
async def simulator_in_process(**config: Any) -> AsyncIterator[tuple[Any, str]]:
    """The simulator served from this process on a free loopback port (its call records on this
    clock): (the `Simulator`, its base URL). `config` is its `SimConfig` (the API key by default)."""
    from service.simulator import SimConfig, Simulator, start_simulator

    sim = Simulator(SimConfig(**{"api_key": API_KEY, **config}))
    runner, base_url = await start_simulator(sim, HOST, 0)
    try:
        yield sim, base_url
    finally:
        await runner.cleanup()


@contextlib.asynccontextmanager
async def serving(method: str, path: str, handler: Any) -> AsyncIterator[str]:
    """A one-route aiohttp app on a free loopback port for the block: its base URL."""
    from aiohttp import web

    app = web.Application()
    app.router.add_route(method, path, handler)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, HOST, port).start()
    try:
        yield f"http://{HOST}:{port}"
    finally:
        await runner.cleanup()


async def run_cmd(*argv: str, timeout_s: float = 60) -> tuple[int, str]:
    """Run a command to completion: (exit code, stdout and stderr); 127 when it is not on PATH,
    124 when it outlives `timeout_s` (it is killed)."""
    if shutil.which(argv[0]) is None:
        return 127, f"{argv[0]} not found on PATH"
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
