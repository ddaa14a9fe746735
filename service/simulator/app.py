"""A DialNexa API simulator: a real aiohttp server with scriptable answers and O(1) bookkeeping.

Serves `POST /v1/workflows/{id}/cancel` and `GET /v1/workflows/{id}` with the real API's shapes
(see docs/contract.md, section 1), plus a JSON control API under `/_sim/` for other processes and `/healthz`.
Order of checks for a /v1 call: latency, rate limit, auth, scripted action, injected fault, normal
behaviour. Injected faults are drawn per call with the configured probabilities from one RNG (seeded
by `fault_seed`, so a run's sequence of draws is reproducible): a 5xx, a timeout (the answer comes
after `fault_timeout_s`, longer than a client's read timeout, and the cancel still takes effect, as
when an answer is lost on the way back), a dropped connection (nothing happens), or a 429 with
`Retry-After: fault_retry_after_s`. All rates default to 0: existing behaviour is unchanged.
The request path does no logging and no scan of call history, so benchmarks measure the client.
"""

from __future__ import annotations

import asyncio
import json
import math
import random
import time
from collections import defaultdict, deque
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields
from http import HTTPStatus
from typing import Any, Literal, TypeGuard

from aiohttp import web

STATUSES = frozenset({"draft", "active", "running", "paused", "completed", "cancelled"})
TERMINAL = frozenset({"completed", "cancelled"})
MAX_CALL_RECORDS = 100_000
_SHUTDOWN_TIMEOUT_S = 1.0
_ACTION_KEYS = frozenset({"status", "retry_after", "envelope", "delay_s", "drop"})
FAULT_KINDS = ("5xx", "timeout", "drop", "429")
_SERVER_ERRORS = (500, 502, 503, 504)
_CAMEL = {
    "node_count": "nodeCount",
    "edge_count": "edgeCount",
    "enrolled_leads": "enrolledLeads",
    "created_at": "createdAt",
}
_MESSAGES: dict[int, str | list[str]] = {
    400: ["id must be a valid workflow id"],
    401: "Invalid or missing API key",
    403: "API key lacks permission for this resource",
    422: ["workflow cannot be cancelled in its current state"],
    429: "ThrottlerException: Too Many Requests",
}

# A scripted answer: a status code, "drop", or {"status", "retry_after", "envelope", "delay_s", "drop"}.
Action = int | str | dict[str, Any]


@dataclass
class SimConfig:
    """Run-time behaviour of the simulator; mutable, validated on construction."""

    api_key: str = "sim_key:sim_secret"
    forbidden_key: str | None = None
    # A key that may read (GET answers as usual) but not cancel (POST .../cancel answers 403).
    read_only_key: str | None = None
    latency_s: float = 0.0
    rate_limit: int | None = None
    rate_window_s: float = 1.0
    # How X-RateLimit-Reset is written: whole seconds (as observed), a Unix time (as documented), or
    # fractional seconds (for time-compressed runs whose windows are shorter than a second).
    reset_style: Literal["seconds", "epoch", "fractional"] = "seconds"
    envelope: Literal["bare", "wrapped"] = "bare"
    camel_case: bool = False
    auto_create: bool = True
    # Injected faults: probability per /v1 call of each kind (their sum at most 1).
    fault_5xx: float = 0.0
    fault_timeout: float = 0.0
    fault_drop: float = 0.0
    fault_429: float = 0.0
    fault_timeout_s: float = 2.0  # how long a "timeout" holds the answer back
    fault_retry_after_s: float = 1.0  # Retry-After of an injected 429 (fractions are sent as such)
    fault_seed: int | None = None  # None: a fresh random sequence

    def fault_rates(self) -> dict[str, float]:
        """Probability per call of each injected fault kind."""
        return {
            "5xx": self.fault_5xx,
            "timeout": self.fault_timeout,
            "drop": self.fault_drop,
            "429": self.fault_429,
        }

    def __post_init__(self) -> None:
        rates = self.fault_rates().values()
        faults_ok = (
            all(_is_number(r) and 0 <= r <= 1 for r in rates)
            and sum(rates) <= 1
            and _is_number(self.fault_timeout_s)
            and self.fault_timeout_s >= 0
            and _is_number(self.fault_retry_after_s)
            and self.fault_retry_after_s >= 0
            and (self.fault_seed is None or _is_int(self.fault_seed))
        )
        ok = faults_ok and (
            isinstance(self.api_key, str)
            and (self.forbidden_key is None or isinstance(self.forbidden_key, str))
            and (self.read_only_key is None or isinstance(self.read_only_key, str))
            and _is_number(self.latency_s)
            and self.latency_s >= 0
            and (self.rate_limit is None or (_is_int(self.rate_limit) and self.rate_limit >= 1))
            and _is_number(self.rate_window_s)
            and self.rate_window_s > 0
            and self.reset_style in ("seconds", "epoch", "fractional")
            and self.envelope in ("bare", "wrapped")
            and isinstance(self.camel_case, bool)
            and isinstance(self.auto_create, bool)
        )
        if not ok:
            raise ValueError(f"invalid simulator config: {self!r}")


@dataclass(frozen=True, slots=True)
class CallRecord:
    """One /v1 call: `status` is None when the connection was dropped; times are monotonic.

    `fault` names the injected fault that shaped the answer (None for scripted or normal ones).
    """

    method: str
    workflow_id: str
    status: int | None
    started_at: float
    finished_at: float
    fault: str | None = None


def _is_int(value: object) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: object) -> TypeGuard[float]:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _normalise_action(action: object) -> dict[str, Any]:
    """Validate one scripted action and return it as a dict (int -> status, "drop" -> drop)."""
    if action == "drop":
        return {"drop": True}
    if _is_int(action):
        action = {"status": action}
    if isinstance(action, dict) and action and set(action) <= _ACTION_KEYS:
        status, delay_s = action.get("status", 200), action.get("delay_s", 0)
        if (
            _is_int(status)
            and 200 <= status <= 599
            and action.get("envelope", "bare") in ("bare", "wrapped")
            and _is_number(delay_s)
            and delay_s >= 0
            and _is_number(action.get("retry_after", 0))
        ):
            return dict(action)
    raise ValueError(f"invalid scripted action: {action!r}")


def error_body(status: int, message: str | list[str] | None = None) -> dict[str, Any]:
    """The API's error body: `{"statusCode", "message", "error": <reason phrase>}`."""
    try:
        reason = HTTPStatus(status).phrase
    except ValueError:
        reason = "Error"
    return {
        "statusCode": status,
        "message": reason if message is None else message,
        "error": reason,
    }


class Simulator:
    """Workflow state, scripted answers and counters behind one aiohttp application."""

    def __init__(self, config: SimConfig | None = None) -> None:
        self.config = config if config is not None else SimConfig()
        self.workflows: dict[str, str] = {}
        self._scripts: dict[str, deque[dict[str, Any]]] = {}
        self._calls: deque[CallRecord] = deque(maxlen=MAX_CALL_RECORDS)
        self.status_counts: dict[int, int] = defaultdict(int)
        self.call_count = self.inflight = self.max_inflight = 0
        self.fault_counts: dict[str, int] = dict.fromkeys(FAULT_KINDS, 0)
        self._window_start: float | None = None
        self._window_count = 0
        self._rng = random.Random(self.config.fault_seed)  # noqa: S311  # fault injection, not crypto
        self._seeded_with = self.config.fault_seed

    # -- Python API ---------------------------------------------------------------------------
    def script(self, workflow_id: str, actions: Sequence[Action]) -> None:
        """Queue answers for the next calls to `workflow_id`, one per call, FIFO."""
        checked = [_normalise_action(a) for a in actions]
        self._scripts.setdefault(workflow_id, deque()).extend(checked)

    def set_status(self, workflow_id: str, status: str) -> None:
        """Create or update a workflow with one of the API's statuses."""
        if status not in STATUSES:
            raise ValueError(f"unknown workflow status: {status!r}")
        self.workflows[workflow_id] = status

    def reseed(self) -> None:
        """Restart the fault RNG from `config.fault_seed` (a fresh random sequence when None)."""
        self._rng.seed(self.config.fault_seed)
        self._seeded_with = self.config.fault_seed

    def calls_for(self, workflow_id: str) -> list[CallRecord]:
        """Every recorded call to one workflow (a scan: for tests, not the request path)."""
        return [c for c in self._calls if c.workflow_id == workflow_id]

    @property
    def calls(self) -> list[CallRecord]:
        """The most recent calls, oldest first (at most MAX_CALL_RECORDS)."""
        return list(self._calls)

    def stats(self) -> dict[str, Any]:
        """Counters as JSON-ready data."""
        return {
            "call_count": self.call_count,
            "status_counts": dict(self.status_counts),
            "inflight": self.inflight,
            "max_inflight": self.max_inflight,
            "fault_counts": dict(self.fault_counts),
        }

    def reset(self) -> None:
        """Forget workflows, scripts, calls, counters and the rate window; keep the config."""
        self.workflows.clear()
        self._scripts.clear()
        self._calls.clear()
        self.call_count = 0
        self.status_counts.clear()
        self.fault_counts = dict.fromkeys(FAULT_KINDS, 0)
        self.max_inflight = self.inflight
        self._window_start, self._window_count = None, 0

    def app(self) -> web.Application:
        """A new aiohttp application serving the API, the control API and /healthz."""
        app = web.Application()
        app.router.add_post("/v1/workflows/{id}/cancel", self._v1)
        app.router.add_get("/v1/workflows/{id}", self._v1)
        app.router.add_get("/healthz", _healthz)
        app.router.add_get("/_sim/stats", self._sim_stats)
        app.router.add_get("/_sim/calls", self._sim_calls)
        app.router.add_get("/_sim/workflows", self._sim_get_workflows)
        app.router.add_post("/_sim/config", self._sim_config)
        app.router.add_post("/_sim/script", self._sim_script)
        app.router.add_post("/_sim/workflows", self._sim_workflows)
        app.router.add_post("/_sim/reset", self._sim_reset)
        return app

    # -- /v1 ------------------------------------------------------------------------------------
    async def _v1(self, request: web.Request) -> web.StreamResponse:
        method, workflow_id = request.method, request.match_info["id"]
        started = time.monotonic()
        self.inflight += 1
        self.max_inflight = max(self.max_inflight, self.inflight)
        status: int | None = None
        fault: list[str] = []  # set by _answer when an injected fault shapes this call
        try:
            response, headers = await self._answer(request, method, workflow_id, fault)
            if response is None:  # drop: close without a byte; aiohttp's write then fails quietly
                if request.transport is not None:
                    request.transport.close()
                return web.Response()
            response.headers.update(headers)
            status = response.status
            return response
        finally:
            self.inflight -= 1
            self.call_count += 1
            if status is not None:
                self.status_counts[status] += 1
            if fault:
                self.fault_counts[fault[0]] += 1
            record = CallRecord(
                method, workflow_id, status, started, time.monotonic(), fault[0] if fault else None
            )
            self._calls.append(record)

    async def _answer(
        self, request: web.Request, method: str, workflow_id: str, fault: list[str]
    ) -> tuple[web.Response | None, dict[str, str]]:
        config = self.config
        if config.latency_s > 0:
            await asyncio.sleep(config.latency_s)
        headers: dict[str, str] = {}
        if config.rate_limit is not None:
            retry_after = self._rate_limit(config, config.rate_limit, headers)
            if retry_after is not None:
                headers["Retry-After"] = str(retry_after)
                return _error(429), headers
        auth = request.headers.get("Authorization", "")
        token = auth[7:] if auth[:7].lower() == "bearer " else None
        if token is not None and token == config.forbidden_key:
            return _error(403), headers
        if token is not None and token == config.read_only_key:
            if method != "GET":
                return _error(403), headers
        elif token != config.api_key:
            return _error(401), headers
        queue = self._scripts.get(workflow_id)
        if queue:
            action = queue.popleft()
            if not queue:
                del self._scripts[workflow_id]
            return await self._scripted(action, method, workflow_id, headers)
        kind = self._draw_fault(config)
        if kind is not None:
            fault.append(kind)
            if kind == "5xx":
                return _error(self._rng.choice(_SERVER_ERRORS)), headers
            if kind == "drop":
                return None, headers
            if kind == "429":
                headers["Retry-After"] = _seconds(config.fault_retry_after_s)
                return _error(429), headers
            await asyncio.sleep(config.fault_timeout_s)  # "timeout": late, but it does take effect
        return self._normal(method, workflow_id, config.envelope), headers

    def _draw_fault(self, config: SimConfig) -> str | None:
        """One draw per call: which injected fault, if any, this call gets."""
        rates = config.fault_rates()
        if not any(rates.values()):
            return None
        if config.fault_seed != self._seeded_with:  # the seed was changed on the config object
            self.reseed()
        draw = self._rng.random()
        for kind, rate in rates.items():
            if draw < rate:
                return kind
            draw -= rate
        return None

    def _rate_limit(self, config: SimConfig, limit: int, headers: dict[str, str]) -> float | None:
        """Count this call in the fixed window; set X-RateLimit-*; return Retry-After if over."""
        now = time.monotonic()
        if self._window_start is None or now - self._window_start >= config.rate_window_s:
            self._window_start, self._window_count = now, 0
        self._window_count += 1
        left_s = config.rate_window_s - (now - self._window_start)
        reset_s: float = max(1, math.ceil(left_s))
        if config.reset_style == "fractional":
            reset_s = round(max(left_s, 0.001), 3)
        headers["X-RateLimit-Limit"] = str(limit)
        headers["X-RateLimit-Remaining"] = str(max(0, limit - self._window_count))
        headers["X-RateLimit-Reset"] = (
            str(math.ceil(time.time() + left_s)) if config.reset_style == "epoch" else str(reset_s)
        )
        return reset_s if self._window_count > limit else None

    async def _scripted(
        self, action: dict[str, Any], method: str, workflow_id: str, headers: dict[str, str]
    ) -> tuple[web.Response | None, dict[str, str]]:
        if action.get("delay_s"):
            await asyncio.sleep(action["delay_s"])
        if action.get("drop"):
            return None, headers
        status: int = action.get("status", 0)  # none: normal behaviour after the delay
        if "retry_after" in action:
            headers["Retry-After"] = str(max(0, math.ceil(action["retry_after"])))
        envelope = action.get("envelope", self.config.envelope)
        if not status:
            return self._normal(method, workflow_id, envelope), headers
        if 200 <= status < 300:  # forced success: cancel (or create) whatever the state
            if method == "POST" or workflow_id not in self.workflows:
                self.workflows[workflow_id] = "cancelled" if method == "POST" else "active"
            return self._success(workflow_id, envelope, status, method), headers
        current = self.workflows.get(workflow_id, "")
        return _error(status, workflow_id, current if current in TERMINAL else "cancelled"), headers

    def _normal(self, method: str, workflow_id: str, envelope: str) -> web.Response:
        current = self.workflows.get(workflow_id)
        if current is None:
            if not self.config.auto_create or "missing" in workflow_id:
                return _error(404, workflow_id)
            current = self.workflows[workflow_id] = "active"
        if method == "POST":
            if current in TERMINAL:
                return _error(409, workflow_id, current)
            self.workflows[workflow_id] = "cancelled"
        return self._success(workflow_id, envelope, 200, method)

    def _success(self, workflow_id: str, envelope: str, status: int, method: str) -> web.Response:
        if status == 204:
            return web.Response(status=204)
        body: dict[str, Any] = {
            "id": workflow_id,
            "name": f"Workflow {workflow_id}",
            "status": self.workflows[workflow_id],
            "node_count": 5,
            "edge_count": 4,
            "enrolled_leads": 12,
            "created_at": "2025-01-15T09:30:00.000Z",
        }
        if self.config.camel_case:
            body = {_CAMEL.get(k, k): v for k, v in body.items()}
        if envelope == "wrapped":
            message = "Workflow cancelled" if method == "POST" else "Workflow retrieved"
            body = {"statusCode": status, "message": message, "data": body}
        return web.json_response(body, status=status)

    # -- control API ----------------------------------------------------------------------------
    async def _sim_stats(self, request: web.Request) -> web.Response:
        return web.json_response(self.stats())

    async def _sim_calls(self, request: web.Request) -> web.Response:
        workflow_id = request.query.get("workflow_id")
        calls = self.calls if workflow_id is None else self.calls_for(workflow_id)
        return web.json_response([asdict(c) for c in calls])

    async def _sim_get_workflows(self, request: web.Request) -> web.Response:
        return web.json_response(self.workflows)

    async def _sim_config(self, request: web.Request) -> web.Response:
        body = await _json_object(request)
        unknown = set(body) - {f.name for f in fields(SimConfig)}
        if unknown:
            raise _bad_request(f"unknown config fields: {sorted(unknown)}")
        try:
            merged = SimConfig(**{**asdict(self.config), **body})
        except ValueError as exc:
            raise _bad_request(str(exc)) from exc
        for name in body:  # update in place: holders of sim.config see the change
            setattr(self.config, name, getattr(merged, name))
        if "fault_seed" in body:  # setting a seed (even the same one) restarts its sequence
            self.reseed()
        return web.json_response(asdict(self.config))

    async def _sim_script(self, request: web.Request) -> web.Response:
        body = await _json_object(request)
        workflow_id, actions = body.get("workflow_id"), body.get("actions")
        if not isinstance(workflow_id, str) or not isinstance(actions, list):
            raise _bad_request('expected {"workflow_id": str, "actions": [...]}')
        try:
            self.script(workflow_id, actions)
        except ValueError as exc:
            raise _bad_request(str(exc)) from exc
        return web.json_response({"workflow_id": workflow_id, "queued": len(self._scripts[workflow_id])})

    async def _sim_workflows(self, request: web.Request) -> web.Response:
        body = await _json_object(request)
        bad = {k: v for k, v in body.items() if v not in STATUSES}
        if bad:
            raise _bad_request(f"unknown statuses: {bad}")
        for workflow_id, status in body.items():
            self.set_status(workflow_id, status)
        return web.json_response(self.workflows)

    async def _sim_reset(self, request: web.Request) -> web.Response:
        self.reset()
        return web.json_response(self.stats())


def _seconds(value: float) -> str:
    """A delay-seconds header value: whole seconds as an integer, a fraction as a decimal."""
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


def _error(status: int, workflow_id: str = "", current: str = "cancelled") -> web.Response:
    if status == 404:
        message: str | list[str] | None = f"Workflow {workflow_id} not found"
    elif status == 409:
        message = f"Workflow is already {current}"
    else:
        message = _MESSAGES.get(status)
    return web.json_response(error_body(status, message), status=status)


def _bad_request(message: str) -> web.HTTPBadRequest:
    return web.HTTPBadRequest(text=json.dumps(error_body(400, message)), content_type="application/json")


async def _json_object(request: web.Request) -> dict[str, Any]:
    try:
        body = await request.json()
    except ValueError as exc:
        raise _bad_request("body is not JSON") from exc
    if not isinstance(body, dict):
        raise _bad_request("body must be a JSON object")
    return body


async def _healthz(request: web.Request) -> web.Response:
    return web.Response(text="ok")


async def start_simulator(
    sim: Simulator, host: str = "127.0.0.1", port: int = 0
) -> tuple[web.AppRunner, str]:
    """Serve `sim` on a real port (0: any free one); return (runner, "http://host:port/v1")."""
    runner = web.AppRunner(sim.app(), access_log=None, shutdown_timeout=_SHUTDOWN_TIMEOUT_S)
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port)
        await site.start()
        bound_port = runner.addresses[0][1]
    except BaseException:
        await runner.cleanup()
        raise
    url_host = f"[{host}]" if ":" in host else host
    return runner, f"http://{url_host}:{bound_port}/v1"
