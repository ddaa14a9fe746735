"""Liveness and readiness, and the HTTP endpoints `/healthz`, `/readyz` and `/metrics`: one app
for the worker and the webhook ingress (which adds its own route to it).

Readiness is not "a connection object exists": the consumer marks each input queue consuming or
not as the broker confirms `basic.consume` and as channels close, and marks the whole worker
paused while DialNexa rejects our credentials; `held_back` (read at every look) says when
DialNexa has asked for a long wait (a 429 with a long Retry-After). `/readyz` is 200 only when
every queue is consumed and nothing is paused or held back.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from .metrics import Metrics

# Whether the process is ready, and what `/readyz` says about it.
ReadinessReport = Callable[[], tuple[bool, Mapping[str, object]]]


class Readiness:
    """Which input queues have an active consumer, and why the worker is paused, if it is."""

    def __init__(
        self,
        queues: Iterable[str],
        metrics: Metrics,
        held_back: Callable[[], str | None] = lambda: None,
    ) -> None:
        self._consuming = dict.fromkeys(queues, False)
        self._paused: str | None = None
        self._held_back = held_back
        self._metrics = metrics
        metrics.ready.set_function(lambda: 1 if self.ready else 0)

    @property
    def ready(self) -> bool:
        return self._paused is None and self._held_back() is None and all(self._consuming.values())

    def consuming(self, queue: str, active: bool) -> None:
        self._consuming[queue] = active

    def stopped(self) -> None:
        """Connection gone or closing: no queue is consumed."""
        for queue in self._consuming:
            self._consuming[queue] = False

    def pause(self, reason: str) -> None:
        self._paused = reason

    def resume(self) -> None:
        self._paused = None

    def describe(self) -> dict[str, object]:
        paused = self._paused or self._held_back()
        return {"ready": self.ready, "paused": paused, "consuming": dict(self._consuming)}

    def report(self) -> tuple[bool, Mapping[str, object]]:
        return self.ready, self.describe()


def build_app(readiness: ReadinessReport, registry: CollectorRegistry) -> web.Application:
    """The small HTTP app the orchestrator and Prometheus talk to."""

    async def healthz(_request: web.Request) -> web.Response:
        return web.json_response({"status": "alive"})

    async def readyz(_request: web.Request) -> web.Response:
        ready, body = readiness()
        return web.json_response(dict(body), status=200 if ready else 503)

    async def metrics(_request: web.Request) -> web.Response:
        return web.Response(body=generate_latest(registry), headers={"Content-Type": CONTENT_TYPE_LATEST})

    app = web.Application()
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics)
    return app


async def start_server(app: web.Application, host: str, port: int) -> web.AppRunner:
    """Serve `app` on host:port; the caller cleans the runner up."""
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    return runner
