"""A real run for the dashboard picture: `make dashboard-picture`.

    python deploy/tools/dashboard_run.py [--load-s 150] [--scrape-s 2] [--keep-logs DIR]

Starts, on this machine and in a RabbitMQ vhost of its own: the DialNexa simulator (with latency,
5xx answers, 429s and slow answers), a worker, the webhook ingress, and a Prometheus (a temporary
directory, scrape every `--scrape-s` seconds) that scrapes the worker, the ingress and RabbitMQ's
per-queue metrics (port 15692, the rabbitmq_prometheus plugin) the way deploy/prometheus does: the
worker and the ingress with the label namespace="workflow-canceller", RabbitMQ with only the run's
vhost, under the metrics' own `vhost` label.
Then it sends a changing load: CloudEvents over AMQP (campaigns and complaints, a burst that builds
a backlog, a few invalid events that are dead-lettered) and signed webhooks to the ingress (both
CloudEvents modes, replays, bad signatures). When the backlog has drained it asks Prometheus for
every panel's queries (deploy/tools/render_dashboard.py query, with the dashboard's `namespace`
and `vhost` variables set to that label and the run's vhost), stores the answers in
docs/dashboard-data.json and draws docs/dashboard.png from them. Everything is stopped and the
vhost deleted at the end, also on failure. Everything listens on and connects to 127.0.0.1 only.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import random
import secrets
import shutil
import sys
import tempfile
import time
import uuid
from functools import partial
from pathlib import Path
from typing import Any

import aio_pika
import aiohttp
from pydantic import SecretStr

from drills.common import DrillError, Vhost, start_worker
from service.ingress import cloudevents, signing
from testkit import HOST, PYTHON, Proc, SimProcess, free_port, spawn, wait_until
from testkit.processes import answers_200

sys.path.insert(0, str(Path(__file__).resolve().parent))
import render_dashboard  # the sibling script, found through the path set just above

RABBITMQ_METRICS_PORT = 15692
# The namespace label of the worker's and the ingress's metrics (deploy/prometheus/prometheus.yml
# gives the compose stack the same one; in Kubernetes it is the pods' namespace).
NAMESPACE = "workflow-canceller"
SIMULATOR_FLAGS = (
    "--latency-ms",
    "20",
    "--fault-5xx",
    "0.03",
    "--fault-429",
    "0.01",
    "--fault-retry-after-s",
    "1",
    "--fault-timeout",
    "0.003",
    "--fault-timeout-s",
    "3",
    "--fault-seed",
    "14",
)
WORKER_SETTINGS = {
    "CANCELLER_RETRY_DELAYS": "1,3,10",
    "CANCELLER_HTTP_READ_TIMEOUT_S": "2",
    "CANCELLER_LOG_LEVEL": "WARNING",
}


def prometheus_config(scrape_s: int, worker_port: int, ingress_port: int, vhost: str) -> str:
    """deploy/prometheus/prometheus.yml's jobs, pointed at this run: the worker and the ingress with
    the `namespace` label the dashboard selects; RabbitMQ's queues of only this run's vhost, whose
    metrics carry their own `vhost` label (no target label of that name, which would rename it)."""
    labels = {"namespace": NAMESPACE}
    config = {
        "global": {"scrape_interval": f"{scrape_s}s", "evaluation_interval": f"{scrape_s}s"},
        "scrape_configs": [
            {
                "job_name": "workflow-canceller",
                "static_configs": [{"targets": [f"{HOST}:{worker_port}"], "labels": labels}],
            },
            {
                "job_name": "workflow-canceller-ingress",
                "static_configs": [{"targets": [f"{HOST}:{ingress_port}"], "labels": labels}],
            },
            {
                "job_name": "rabbitmq-detailed",
                "metrics_path": "/metrics/detailed",
                "params": {"family": ["queue_coarse_metrics", "queue_consumer_count"], "vhost": [vhost]},
                "static_configs": [{"targets": [f"{HOST}:{RABBITMQ_METRICS_PORT}"]}],
            },
        ],
    }
    return json.dumps(config, indent=2)  # JSON is YAML


class Load:
    """The traffic of the run: AMQP events and webhooks at a rate that changes over time."""

    def __init__(self, amqp_url: str, ingress_url: str, secret: str, seed: int = 14) -> None:
        self.amqp_url = amqp_url
        self.ingress_url = ingress_url
        self.secret = SecretStr(secret)
        self.random = random.Random(seed)  # noqa: S311  # test traffic, not crypto
        self.sent = 0
        self.webhooks: dict[int, int] = {}
        self.accepted: list[tuple[bytes, dict[str, str]]] = []

    def event(self, invalid: bool = False, campaign: bool = False) -> dict[str, Any]:
        tag = uuid.uuid4().hex[:10]
        if not campaign and self.random.random() < 0.3:
            ids = [f"wf_{tag}_{n}" for n in range(self.random.randint(1, 2))]
            data: dict[str, Any] = {"complaint_id": f"cpl_{tag}", "workflow_ids": ids, "lead_id": "lead_1"}
            kind = "complaint-received"
        else:
            ids = [f"wf_{tag}_{n}" for n in range(self.random.randint(1, 12))]
            data = {"campaign_id": f"cmp_{tag}", "workflow_ids": ids, "reason": "ended"}
            kind = "campaign-ended"
        if invalid:
            data["workflow_ids"] = ["not a workflow id"]
        return {
            "specversion": "1.0",
            "id": f"evt_{tag}",
            "source": "urn:crm:dashboard-run",
            "type": kind,
            "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "data": data,
        }

    @staticmethod
    def rate(elapsed_s: float, load_s: float) -> float:
        """Events per second over AMQP: a ramp, a plateau, a step down and a quiet end."""
        share = elapsed_s / load_s
        if share < 0.25:
            return 4 + 40 * share
        if share < 0.6:
            return 14.0
        if share < 0.85:
            return 7.0
        return 2.0

    async def amqp(self, load_s: float) -> None:
        connection = await aio_pika.connect(self.amqp_url)
        async with connection:
            channel = await connection.channel(publisher_confirms=True)
            exchange = await channel.declare_exchange("crm.events", aio_pika.ExchangeType.TOPIC, durable=True)
            started = time.monotonic()
            burst_done = False
            while (elapsed := time.monotonic() - started) < load_s:
                batch = 1
                if not burst_done and elapsed > load_s * 0.45:
                    batch, burst_done = 400, True  # a burst: the backlog and in-flight panels move
                for _ in range(batch):
                    # the burst is a large campaign ending: complaints keep trickling in beside it
                    event = self.event(invalid=self.random.random() < 0.02, campaign=batch > 1)
                    message = aio_pika.Message(
                        json.dumps(event).encode(),
                        content_type=cloudevents.STRUCTURED,
                        delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                        message_id=event["id"],
                    )
                    await exchange.publish(message, routing_key=event["type"])
                    self.sent += 1
                await asyncio.sleep(1 / self.rate(elapsed, load_s))

    def signed(self, body: bytes, **change: Any) -> dict[str, str]:
        when = int(change.get("at", time.time()))
        headers = signing.sign(self.secret, f"msg_{uuid.uuid4().hex}", when, body)
        if change.get("forged"):
            headers["webhook-signature"] = "v1," + base64.b64encode(secrets.token_bytes(32)).decode()
        return headers

    async def webhook(self, session: aiohttp.ClientSession) -> None:
        roll = self.random.random()
        event = self.event()
        if roll < 0.08 and self.accepted:  # a retry of an accepted delivery: 202 duplicate
            body, headers = self.random.choice(self.accepted)
        elif roll < 0.25:  # binary mode
            body = json.dumps(event["data"]).encode()
            headers = {
                "Content-Type": "application/json",
                "ce-specversion": "1.0",
                "ce-id": event["id"],
                "ce-source": "urn:crm:dashboard-run",
                "ce-type": event["type"],
                **self.signed(body),
            }
        else:
            body = json.dumps(event).encode()
            change = {}
            if roll > 0.95:
                change = {"forged": True}
            elif roll > 0.92:
                change = {"at": time.time() - 900}
            headers = {"Content-Type": cloudevents.STRUCTURED, **self.signed(body, **change)}
        async with session.post(f"{self.ingress_url}/v1/events", data=body, headers=headers) as answer:
            await answer.read()
            self.webhooks[answer.status] = self.webhooks.get(answer.status, 0) + 1
            if answer.status == 202 and len(self.accepted) < 50:
                self.accepted.append((body, headers))

    async def http(self, load_s: float) -> None:
        started = time.monotonic()
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:
            while (elapsed := time.monotonic() - started) < load_s:
                await self.webhook(session)
                await asyncio.sleep(1 / (1 + self.rate(elapsed, load_s) / 4))


async def queue_empty(vhost: str) -> bool:
    """Whether both input queues have nothing ready or unacked (the run's backlog has drained)."""
    url = f"http://{HOST}:{RABBITMQ_METRICS_PORT}/metrics/detailed"
    params = {"family": "queue_coarse_metrics", "vhost": vhost}
    async with aiohttp.ClientSession() as session, session.get(url, params=params) as answer:
        text = await answer.text()
    busy = [
        line
        for line in text.splitlines()
        if line.startswith(
            ("rabbitmq_detailed_queue_messages_ready", "rabbitmq_detailed_queue_messages_unacked")
        )
        and ("campaign-ended" in line or "complaint-received" in line)
        and not line.rstrip().endswith(" 0")
    ]
    return not busy


async def run(args: argparse.Namespace) -> int:
    """The whole run; the processes are stopped and the vhost deleted whatever happens."""
    if shutil.which("prometheus") is None:
        raise DrillError(
            "prometheus is not installed (Debian package prometheus; make dashboard-picture installs it)"
        )
    await wait_until(
        lambda: answers_200(RABBITMQ_METRICS_PORT, "/metrics"),
        timeout_s=30,
        what=f"RabbitMQ's Prometheus endpoint on port {RABBITMQ_METRICS_PORT} (rabbitmq_prometheus plugin)",
    )
    work = Path(tempfile.mkdtemp(prefix="dashboard-run-"))
    logs = args.keep_logs or work / "logs"
    procs: list[Proc] = []
    try:
        async with Vhost("workflow-canceller-dashboard") as vhost:
            sim = await SimProcess.start(logs, *SIMULATOR_FLAGS)
            procs.append(sim.proc)
            connection = await aio_pika.connect(vhost.url)
            async with connection:  # outputs are published `mandatory`: give them a queue
                channel = await connection.channel()
                output = await channel.declare_exchange(
                    "workflow.events", aio_pika.ExchangeType.TOPIC, durable=True
                )
                keep = await channel.declare_queue(
                    "workflow-canceller.local-outputs", durable=True, arguments={"x-max-length": 10_000}
                )
                await keep.bind(output, "workflow-cancelled")
            worker = await start_worker(vhost.url, sim.base_url, WORKER_SETTINGS, logs, procs)
            secret = "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()
            ingress_port = free_port()
            ingress_env = {
                "CANCELLER_AMQP_URL": vhost.url,
                "CANCELLER_WEBHOOK_SECRETS": secret,
                "CANCELLER_INGRESS_HOST": HOST,
                "CANCELLER_INGRESS_PORT": str(ingress_port),
                "CANCELLER_LOG_LEVEL": "WARNING",
            }
            ingress = await spawn(
                "ingress", [PYTHON, "-m", "service", "ingress"], ingress_env, logs, ingress_port
            )
            procs.append(ingress)
            await wait_until(
                lambda: answers_200(ingress_port, "/readyz"), timeout_s=30, what="the ingress ready"
            )

            assert worker.port is not None  # noqa: S101  # start_worker sets it
            config = work / "prometheus.yml"
            config.write_text(prometheus_config(args.scrape_s, worker.port, ingress_port, vhost.name))
            prom_port = free_port()
            prometheus = await spawn(
                "prometheus",
                [
                    "prometheus",
                    f"--config.file={config}",
                    f"--storage.tsdb.path={work / 'tsdb'}",
                    f"--web.listen-address={HOST}:{prom_port}",
                ],
                {},
                logs,
                prom_port,
            )
            procs.insert(0, prometheus)
            prometheus_ready = partial(answers_200, prom_port, "/-/ready")
            await wait_until(prometheus_ready, timeout_s=60, what="Prometheus ready")

            start = int(time.time())
            print(
                f"run: scraping every {args.scrape_s}s; {args.quiet_s}s quiet, {args.load_s}s of load",
                flush=True,
            )
            await asyncio.sleep(args.quiet_s)
            load = Load(vhost.url, f"http://{HOST}:{ingress_port}", secret)
            await asyncio.gather(load.amqp(args.load_s), load.http(args.load_s))
            await wait_until(lambda: queue_empty(vhost.name), timeout_s=300, what="the input queues drained")
            await asyncio.sleep(args.quiet_s)
            end = int(time.time())
            await asyncio.sleep(2 * args.scrape_s)  # the last samples are in
            print(f"run: {load.sent} AMQP events, webhooks by status {dict(sorted(load.webhooks.items()))}")

            dashboard = render_dashboard.load()
            chosen = {"namespace": NAMESPACE, "vhost": vhost.name}
            data = render_dashboard.query(
                f"http://{HOST}:{prom_port}", dashboard, start, end, args.scrape_s, chosen
            )
            render_dashboard.DATA.write_text(json.dumps(data, separators=(",", ":"), sort_keys=True) + "\n")
            empty = sorted(key for key, found in data["targets"].items() if not found["series"])
            print(f"run: {len(data['targets'])} queries stored; without series: {', '.join(empty) or 'none'}")
            render_dashboard.PICTURE.write_bytes(render_dashboard.render(dashboard, data))
            print(
                f"run: wrote {render_dashboard.DATA.relative_to(render_dashboard.ROOT)} and "
                f"{render_dashboard.PICTURE.relative_to(render_dashboard.ROOT)}"
            )
    finally:
        for proc in procs:
            await proc.stop(timeout_s=20)
        if args.keep_logs is None:
            shutil.rmtree(work, ignore_errors=True)
        else:
            print(f"run: logs in {logs}; Prometheus data in {work}")
    return 0


def main() -> int:
    """Parse the arguments and run; exit 1 with one line when the run itself cannot go on."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--load-s", type=float, default=150.0, help="seconds of load (default %(default)s)")
    parser.add_argument("--quiet-s", type=float, default=10.0, help="quiet seconds before and after the load")
    parser.add_argument(
        "--scrape-s", type=int, default=2, help="Prometheus's scrape interval (default %(default)s)"
    )
    parser.add_argument("--keep-logs", type=Path, help="keep the processes' logs and Prometheus's data here")
    args = parser.parse_args()
    try:
        return asyncio.run(run(args))
    except DrillError as error:
        print(f"dashboard-picture: {error}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())
    sys.exit(130)
