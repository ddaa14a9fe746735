"""The DialNexa simulator over real HTTP: API behaviour, scripting, rate limits, control API, CLI."""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import pytest_asyncio

from service.simulator import SimConfig, Simulator
from testkit import SimProcess, simulator_in_process
from tests.support import wait_until

KEY = "sim_key:sim_secret"
AUTH = {"Authorization": f"Bearer {KEY}"}


class Sim:
    """A running simulator with an httpx client pointed at its /v1 base URL."""

    def __init__(self, sim: Simulator, base_url: str, client: httpx.AsyncClient) -> None:
        self.sim, self.base_url, self.client = sim, base_url, client
        self.root = base_url.removesuffix("/v1")

    async def cancel(self, workflow_id: str, headers: dict[str, str] | None = None) -> httpx.Response:
        return await self.client.post(
            f"{self.base_url}/workflows/{workflow_id}/cancel", headers=headers or AUTH
        )

    async def get(self, workflow_id: str) -> httpx.Response:
        return await self.client.get(f"{self.base_url}/workflows/{workflow_id}", headers=AUTH)


@pytest_asyncio.fixture
async def sim() -> AsyncIterator[Sim]:
    """A simulator with the default config on a free port."""
    async with simulator_in_process() as (simulator, base_url), httpx.AsyncClient(timeout=5.0) as client:
        yield Sim(simulator, base_url, client)


@pytest.mark.asyncio
async def test_cancel_bare_success(sim: Sim) -> None:
    """Cancelling an unknown id auto-creates it and answers 200 with the bare cancelled workflow."""
    response = await sim.cancel("wf_1")
    assert response.status_code == 200
    body = response.json()
    assert body["id"] == "wf_1" and body["status"] == "cancelled"
    assert set(body) == {
        "id",
        "name",
        "status",
        "node_count",
        "edge_count",
        "enrolled_leads",
        "created_at",
    }
    assert sim.sim.workflows["wf_1"] == "cancelled"
    assert (await sim.get("wf_1")).json()["status"] == "cancelled"


@pytest.mark.asyncio
async def test_cancel_wrapped_and_camel_case(sim: Sim) -> None:
    """The wrapped envelope and camelCase keys follow the config at run time."""
    sim.sim.config.envelope = "wrapped"
    sim.sim.config.camel_case = True
    body = (await sim.cancel("wfl_2")).json()
    assert body["statusCode"] == 200 and body["message"] == "Workflow cancelled"
    data = body["data"]
    assert data["status"] == "cancelled"
    assert {"nodeCount", "edgeCount", "enrolledLeads", "createdAt"} <= set(data)
    assert "created_at" not in data


@pytest.mark.asyncio
@pytest.mark.parametrize("status", ["completed", "cancelled"])
async def test_cancel_terminal_is_409(sim: Sim, status: str) -> None:
    """A terminal workflow answers 409 with the API's conflict body and keeps its status."""
    sim.sim.set_status("wf_t", status)
    response = await sim.cancel("wf_t")
    assert response.status_code == 409
    assert response.json() == {
        "statusCode": 409,
        "message": f"Workflow is already {status}",
        "error": "Conflict",
    }
    assert sim.sim.workflows["wf_t"] == status


@pytest.mark.asyncio
async def test_missing_is_404(sim: Sim) -> None:
    """Ids containing "missing", and unknown ids without auto_create, answer 404."""
    response = await sim.cancel("wf_missing_1")
    assert response.status_code == 404
    assert response.json()["error"] == "Not Found"
    assert (await sim.get("wf_missing_2")).status_code == 404
    sim.sim.config.auto_create = False
    assert (await sim.cancel("wf_unknown")).status_code == 404
    sim.sim.set_status("wf_known", "paused")
    assert (await sim.cancel("wf_known")).status_code == 200


@pytest.mark.asyncio
async def test_auth_401_and_403(sim: Sim) -> None:
    """A wrong or missing key answers 401, the forbidden key 403, and a changed api_key applies."""
    sim.sim.config.forbidden_key = "ro_key:secret"
    assert (await sim.cancel("wf_a", {"Authorization": "Bearer nope"})).status_code == 401
    assert (await sim.client.post(f"{sim.base_url}/workflows/wf_a/cancel")).status_code == 401
    forbidden = await sim.cancel("wf_a", {"Authorization": "Bearer ro_key:secret"})
    assert forbidden.status_code == 403
    assert forbidden.json()["error"] == "Forbidden"
    sim.sim.config.api_key = "new:key"
    assert (await sim.cancel("wf_a")).status_code == 401
    assert (await sim.cancel("wf_a", {"Authorization": "Bearer new:key"})).status_code == 200
    assert sim.sim.status_counts == {401: 3, 403: 1, 200: 1}


@pytest.mark.asyncio
async def test_scripted_statuses_in_order(sim: Sim) -> None:
    """Scripted answers are consumed one per call, FIFO, then normal behaviour resumes."""
    sim.sim.script("wf_s", [503, 400, {"status": 429, "retry_after": 2}, 200])
    first = await sim.cancel("wf_s")
    assert first.status_code == 503
    assert first.json() == {
        "statusCode": 503,
        "message": "Service Unavailable",
        "error": "Service Unavailable",
    }
    second = await sim.get("wf_s")
    assert second.status_code == 400 and isinstance(second.json()["message"], list)
    third = await sim.cancel("wf_s")
    assert third.status_code == 429 and third.headers["Retry-After"] == "2"
    assert (await sim.cancel("wf_s")).status_code == 200
    assert (await sim.cancel("wf_s")).status_code == 409
    assert [c.status for c in sim.sim.calls_for("wf_s")] == [503, 400, 429, 200, 409]
    assert [c.method for c in sim.sim.calls_for("wf_s")] == ["POST", "GET", "POST", "POST", "POST"]


@pytest.mark.asyncio
async def test_scripted_envelope_and_delay(sim: Sim) -> None:
    """A one-off envelope applies to one answer, and delay_s sleeps before the scripted status."""
    sim.sim.script("wf_e", [{"status": 200, "envelope": "wrapped"}, {"delay_s": 0.05, "status": 502}])
    assert (await sim.cancel("wf_e")).json()["data"]["status"] == "cancelled"
    delayed = await sim.get("wf_e")
    assert delayed.status_code == 502
    record = sim.sim.calls_for("wf_e")[-1]
    assert record.finished_at - record.started_at >= 0.05
    assert (await sim.get("wf_e")).json()["status"] == "cancelled"
    with pytest.raises(ValueError, match="invalid scripted action"):
        sim.sim.script("wf_e", ["explode"])


@pytest.mark.asyncio
async def test_drop_gives_transport_error(sim: Sim) -> None:
    """A scripted "drop" closes the connection: httpx raises a transport error, not a response."""
    sim.sim.script("wf_d", ["drop"])
    with pytest.raises((httpx.RemoteProtocolError, httpx.ReadError)):
        await sim.cancel("wf_d")
    assert sim.sim.calls_for("wf_d")[0].status is None
    assert sim.sim.call_count == 1 and sim.sim.status_counts == {}
    assert (await sim.cancel("wf_d")).status_code == 200


@pytest.mark.asyncio
async def test_rate_limit_seconds_style(sim: Sim) -> None:
    """Over the limit answers 429 with Retry-After; every answer carries X-RateLimit-* headers."""
    sim.sim.config.rate_limit = 2
    sim.sim.config.rate_window_s = 30.0
    responses = [await sim.cancel(f"wf_r{i}") for i in range(3)]
    assert [r.status_code for r in responses] == [200, 200, 429]
    assert [r.headers["X-RateLimit-Remaining"] for r in responses] == ["1", "0", "0"]
    assert all(r.headers["X-RateLimit-Limit"] == "2" for r in responses)
    assert all(r.headers["X-RateLimit-Reset"] == "30" for r in responses)
    limited = responses[2]
    assert limited.headers["Retry-After"] == "30"
    assert limited.json()["error"] == "Too Many Requests"
    assert sim.sim.status_counts[429] == 1 and sim.sim.call_count == 3


@pytest.mark.asyncio
async def test_rate_limit_epoch_style(sim: Sim) -> None:
    """With reset_style "epoch" X-RateLimit-Reset is the Unix time the window ends."""
    sim.sim.config.rate_limit = 1
    sim.sim.config.rate_window_s = 20.0
    sim.sim.config.reset_style = "epoch"
    before = time.time()
    await sim.cancel("wf_e1")
    limited = await sim.cancel("wf_e2")
    assert limited.status_code == 429
    reset = int(limited.headers["X-RateLimit-Reset"])
    assert math.floor(before) + 19 <= reset <= math.ceil(time.time()) + 20
    assert 1 <= int(limited.headers["Retry-After"]) <= 20


@pytest.mark.asyncio
async def test_rate_window_rolls_over(sim: Sim) -> None:
    """A new window starts after rate_window_s, and Retry-After is at least 1 for short windows."""
    sim.sim.config.rate_limit = 1
    sim.sim.config.rate_window_s = 0.2
    assert (await sim.cancel("wf_w0")).status_code == 200
    limited = await sim.cancel("wf_w1")
    assert limited.status_code == 429 and limited.headers["Retry-After"] == "1"

    async def answered() -> bool:
        return (await sim.cancel("wf_w1")).status_code != 429

    await wait_until(answered, timeout_s=3, what="the rate window rolling over")


@pytest.mark.asyncio
async def test_max_inflight_with_latency(sim: Sim) -> None:
    """Concurrent requests held by latency are counted in inflight and max_inflight."""
    sim.sim.config.latency_s = 0.2
    results = await asyncio.gather(*(sim.cancel(f"wf_c{i}") for i in range(8)))
    assert all(r.status_code == 200 for r in results)
    assert sim.sim.max_inflight == 8 and sim.sim.inflight == 0
    assert all(c.finished_at - c.started_at >= 0.2 for c in sim.sim.calls)


@pytest.mark.asyncio
async def test_control_api(sim: Sim) -> None:
    """The /_sim control API configures, scripts, seeds, reports and resets over HTTP."""
    client, root = sim.client, sim.root
    assert (await client.get(f"{root}/healthz")).text == "ok"
    config = (await client.post(f"{root}/_sim/config", json={"camel_case": True})).json()
    assert config["camel_case"] is True and config["api_key"] == KEY
    assert sim.sim.config.camel_case is True
    bad = await client.post(f"{root}/_sim/config", json={"envelope": "boxed"})
    assert bad.status_code == 400 and sim.sim.config.envelope == "bare"
    assert (await client.post(f"{root}/_sim/config", json={"nope": 1})).status_code == 400
    seeded = await client.post(f"{root}/_sim/workflows", json={"wf_x": "completed", "wf_y": "draft"})
    assert seeded.json() == {"wf_x": "completed", "wf_y": "draft"}
    assert (await client.post(f"{root}/_sim/workflows", json={"wf_z": "gone"})).status_code == 400
    script = {"workflow_id": "wf_y", "actions": [500, {"status": 429, "retry_after": 1}]}
    assert (await client.post(f"{root}/_sim/script", json=script)).json()["queued"] == 2
    bad_script = {"workflow_id": "wf_y", "actions": [{"bogus": 1}]}
    assert (await client.post(f"{root}/_sim/script", json=bad_script)).status_code == 400
    statuses = [(await sim.cancel(w)).status_code for w in ("wf_x", "wf_y", "wf_y", "wf_y")]
    assert statuses == [409, 500, 429, 200]
    stats = (await client.get(f"{root}/_sim/stats")).json()
    assert stats == {
        "call_count": 4,
        "status_counts": {"409": 1, "500": 1, "429": 1, "200": 1},
        "inflight": 0,
        "max_inflight": 1,
        "fault_counts": {"5xx": 0, "timeout": 0, "drop": 0, "429": 0},
    }
    calls: list[dict[str, Any]] = (
        await client.get(f"{root}/_sim/calls", params={"workflow_id": "wf_y"})
    ).json()
    assert [c["status"] for c in calls] == [500, 429, 200]
    assert set(calls[0]) == {"method", "workflow_id", "status", "started_at", "finished_at", "fault"}
    assert calls[0]["fault"] is None
    reset = (await client.post(f"{root}/_sim/reset")).json()
    assert reset["call_count"] == 0 and sim.sim.workflows == {} and sim.sim.calls == []
    assert sim.sim.config.camel_case is True


@pytest.mark.asyncio
async def test_cli_serves_and_exits_on_sigterm(tmp_path: Path) -> None:
    """The CLI picks a free port and names it in its listening line, serves, and exits 0 on SIGTERM."""
    sim = await SimProcess.start(tmp_path, "--latency-ms", "1")
    try:
        first_line = sim.proc.log_text().splitlines()[0]
        assert first_line == f"dialnexa-simulator listening on {sim.base_url}"
        assert sim.base_url.startswith("http://127.0.0.1:") and sim.base_url.endswith("/v1")
        async with httpx.AsyncClient(timeout=5.0) as client:
            assert (await client.get(f"{sim.root}/healthz")).text == "ok"
            response = await client.post(f"{sim.base_url}/workflows/wf_cli/cancel", headers=AUTH)
            assert response.status_code == 200
    finally:
        assert await sim.proc.stop(timeout_s=10) == 0


def test_config_validation() -> None:
    """SimConfig rejects values the simulator cannot honour."""
    with pytest.raises(ValueError, match="invalid simulator config"):
        SimConfig(rate_limit=0)
    with pytest.raises(ValueError, match="invalid simulator config"):
        SimConfig(reset_style="iso")  # type: ignore[arg-type]  # deliberately invalid


# --- injected faults -------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_fault_5xx_answers_a_server_error_and_changes_nothing(sim: Sim) -> None:
    """With fault_5xx = 1 every call answers 500/502/503/504 with the error body; no workflow changes."""
    sim.sim.config.fault_5xx = 1.0
    responses = [await sim.cancel(f"wf_f{i}") for i in range(20)]
    assert {r.status_code for r in responses} <= {500, 502, 503, 504}
    assert len({r.status_code for r in responses}) > 1  # not always the same one
    assert all(r.json()["statusCode"] == r.status_code for r in responses)
    assert sim.sim.workflows == {}
    assert sim.sim.fault_counts["5xx"] == 20
    assert all(c.fault == "5xx" for c in sim.sim.calls)


@pytest.mark.asyncio
async def test_fault_429_carries_retry_after(sim: Sim) -> None:
    """An injected 429 carries Retry-After: whole seconds as an integer, a fraction as a decimal."""
    sim.sim.config.fault_429 = 1.0
    sim.sim.config.fault_retry_after_s = 0.2
    limited = await sim.cancel("wf_l")
    assert limited.status_code == 429 and limited.headers["Retry-After"] == "0.2"
    assert limited.json()["error"] == "Too Many Requests"
    sim.sim.config.fault_retry_after_s = 3.0
    assert (await sim.cancel("wf_l")).headers["Retry-After"] == "3"
    assert sim.sim.status_counts == {429: 2} and sim.sim.fault_counts["429"] == 2


@pytest.mark.asyncio
async def test_fault_drop_closes_the_connection_without_effect(sim: Sim) -> None:
    """An injected drop closes the connection without an answer; the workflow is not cancelled."""
    sim.sim.config.fault_drop = 1.0
    with pytest.raises((httpx.RemoteProtocolError, httpx.ReadError)):
        await sim.cancel("wf_dropped")
    assert "wf_dropped" not in sim.sim.workflows
    assert sim.sim.calls_for("wf_dropped")[0].status is None
    assert sim.sim.calls_for("wf_dropped")[0].fault == "drop"
    sim.sim.config.fault_drop = 0.0
    assert (await sim.cancel("wf_dropped")).status_code == 200


@pytest.mark.asyncio
async def test_fault_timeout_answers_late_but_takes_effect(sim: Sim) -> None:
    """An injected timeout outlasts the client's read timeout, yet the cancel happens: a retry gets 409."""
    sim.sim.config.fault_timeout = 1.0
    sim.sim.config.fault_timeout_s = 0.5
    with pytest.raises(httpx.ReadTimeout):
        await sim.client.post(
            f"{sim.base_url}/workflows/wf_slow/cancel", headers=AUTH, timeout=httpx.Timeout(5.0, read=0.1)
        )
    await wait_until(lambda: sim.sim.workflows.get("wf_slow") == "cancelled", what="the late cancel")
    sim.sim.config.fault_timeout = 0.0
    assert (await sim.cancel("wf_slow")).status_code == 409
    record = sim.sim.calls_for("wf_slow")[0]
    assert record.fault == "timeout" and record.finished_at - record.started_at >= 0.5


@pytest.mark.asyncio
async def test_scripted_answers_and_auth_come_before_faults(sim: Sim) -> None:
    """A scripted answer and a 401 are never replaced by an injected fault."""
    sim.sim.config.fault_5xx = 1.0
    sim.sim.script("wf_p", [200])
    assert (await sim.cancel("wf_p")).status_code == 200
    assert (await sim.cancel("wf_p", {"Authorization": "Bearer wrong:key"})).status_code == 401
    assert (await sim.cancel("wf_p")).status_code in (500, 502, 503, 504)
    assert sim.sim.fault_counts["5xx"] == 1


async def _statuses(calls: int, **config: Any) -> list[int | None]:
    async with (
        simulator_in_process(**config) as (simulator, base_url),
        httpx.AsyncClient(timeout=2.0) as client,
    ):
        for i in range(calls):
            with contextlib.suppress(httpx.TransportError):
                await client.post(f"{base_url}/workflows/wf_seed{i}/cancel", headers=AUTH)
    return [c.status for c in simulator.calls]


@pytest.mark.asyncio
async def test_seeded_faults_are_reproducible() -> None:
    """The same fault_seed gives the same sequence of answers; another seed gives another."""
    rates = {"fault_5xx": 0.3, "fault_drop": 0.1, "fault_429": 0.2, "fault_retry_after_s": 0.0}
    first = await _statuses(40, fault_seed=7, **rates)
    again = await _statuses(40, fault_seed=7, **rates)
    other = await _statuses(40, fault_seed=8, **rates)
    assert first == again
    assert first != other
    assert {None, 429, 200} <= set(first)


@pytest.mark.asyncio
async def test_control_api_sets_fault_rates_and_reseeds(sim: Sim) -> None:
    """Fault knobs are set over /_sim/config (validated), counted in /_sim/stats and named in /_sim/calls."""
    client, root = sim.client, sim.root
    for bad in (
        {"fault_5xx": 1.5},
        {"fault_drop": -0.1},
        {"fault_5xx": 0.6, "fault_429": 0.6},
        {"fault_seed": "x"},
    ):
        assert (await client.post(f"{root}/_sim/config", json=bad)).status_code == 400, bad
    assert sim.sim.config.fault_rates() == {"5xx": 0.0, "timeout": 0.0, "drop": 0.0, "429": 0.0}
    body = {"fault_5xx": 0.5, "fault_429": 0.5, "fault_retry_after_s": 0, "fault_seed": 3}
    config = (await client.post(f"{root}/_sim/config", json=body)).json()
    assert config["fault_5xx"] == 0.5 and config["fault_seed"] == 3
    first = [(await sim.cancel(f"wf_k{i}")).status_code for i in range(10)]
    # Setting the seed again restarts its sequence.
    assert (await client.post(f"{root}/_sim/config", json={"fault_seed": 3})).status_code == 200
    again = [(await sim.cancel(f"wf_k{i}")).status_code for i in range(10)]
    assert first == again and all(code != 200 for code in first)
    stats = (await client.get(f"{root}/_sim/stats")).json()
    assert stats["fault_counts"]["5xx"] + stats["fault_counts"]["429"] == 20
    calls = (await client.get(f"{root}/_sim/calls")).json()
    assert {c["fault"] for c in calls} <= {"5xx", "429"}
    assert (await client.post(f"{root}/_sim/reset")).json()["fault_counts"]["429"] == 0


@pytest.mark.asyncio
async def test_cli_fault_flags(tmp_path: Path) -> None:
    """The CLI's fault flags reach the config: --fault-5xx 1 makes every call a server error."""
    sim = await SimProcess.start(
        tmp_path, "--fault-5xx", "1", "--fault-seed", "5", "--fault-timeout-s", "0.5"
    )
    try:
        async with httpx.AsyncClient(timeout=5.0) as client:
            response = await client.post(f"{sim.base_url}/workflows/wf_c/cancel", headers=AUTH)
            assert response.status_code in (500, 502, 503, 504)
        assert (await sim.stats())["fault_counts"]["5xx"] == 1
    finally:
        assert await sim.proc.stop(timeout_s=10) == 0


def test_fault_config_validation() -> None:
    """Fault rates are probabilities whose sum is at most 1; the defaults inject nothing."""
    assert SimConfig().fault_rates() == {"5xx": 0.0, "timeout": 0.0, "drop": 0.0, "429": 0.0}
    SimConfig(fault_5xx=0.5, fault_timeout=0.2, fault_drop=0.2, fault_429=0.1)
    for bad in ({"fault_5xx": 1.01}, {"fault_429": 0.6, "fault_drop": 0.5}, {"fault_timeout_s": -1.0}):
        with pytest.raises(ValueError, match="invalid simulator config"):
            SimConfig(**bad)  # type: ignore[arg-type]  # deliberately invalid
