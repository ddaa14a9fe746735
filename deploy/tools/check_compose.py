"""Check what the compose specification cannot: that docker-compose.yml's files and names line up.

    python3 deploy/tools/check_compose.py

- every bind-mounted ./path exists in the repository;
- deploy/rabbitmq/definitions.json parses and binds a queue to workflow.events (otherwise the
  worker's workflow-cancelled events would be unroutable in the local stack);
- every Prometheus scrape target is a compose service on a port that service listens on, and the
  rule file Prometheus loads is the one the PrometheusRule is generated from;
- the worker's stop_grace_period is longer than its CANCELLER_DRAIN_TIMEOUT_S;
- the webhook ingress publishes its CANCELLER_INGRESS_PORT, runs `workflow-canceller ingress`, and its
  stop_grace_period is longer than CANCELLER_PUBLISH_TIMEOUT_S (in-flight requests wait that long).
Exit status 1 with one line per problem.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]


def _seconds(duration: str) -> float:
    match = re.fullmatch(r"(\d+)(ms|s|m)", duration)
    if not match:
        raise ValueError(f"unsupported duration {duration!r}")
    value, unit = int(match[1]), match[2]
    return value / 1000 if unit == "ms" else value * (60 if unit == "m" else 1)


def check(compose: dict[str, Any]) -> list[str]:
    """Return one message per problem found in the parsed compose file."""
    problems: list[str] = []
    services: dict[str, Any] = compose["services"]
    for name, service in services.items():
        for volume in service.get("volumes", []):
            source = volume.split(":", 1)[0] if isinstance(volume, str) else volume.get("source", "")
            if source.startswith("./") and not (ROOT / source).exists():
                problems.append(f"service {name}: mounts {source}, which does not exist")

    definitions = json.loads((ROOT / "deploy/rabbitmq/definitions.json").read_text())
    if not any(b.get("source") == "workflow.events" for b in definitions.get("bindings", [])):
        problems.append("definitions.json: no queue bound to workflow.events")

    prometheus = yaml.safe_load((ROOT / "deploy/prometheus/prometheus.yml").read_text())
    for job in prometheus["scrape_configs"]:
        for static in job.get("static_configs", []):
            for target in static["targets"]:
                host, _, port = target.partition(":")
                service = services.get(host)
                if service is None:
                    problems.append(f"prometheus job {job['job_name']}: {host} is not a compose service")
                    continue
                ports = {p.split(":")[-1] for p in service.get("ports", [])}
                if port not in ports:
                    problems.append(f"prometheus job {job['job_name']}: {host} does not publish {port}")
    if prometheus.get("rule_files") != ["rules/workflow-canceller.rules.yml"]:
        problems.append("prometheus.yml must load rules/workflow-canceller.rules.yml")

    worker = services["worker"]
    drain_s = float(worker["environment"]["CANCELLER_DRAIN_TIMEOUT_S"])
    if _seconds(worker.get("stop_grace_period", "10s")) <= drain_s:
        problems.append("worker: stop_grace_period must be longer than CANCELLER_DRAIN_TIMEOUT_S")
    problems += _check_ingress(services.get("ingress"))
    return problems


def _check_ingress(ingress: dict[str, Any] | None) -> list[str]:
    """The webhook ingress service: its command, its port, its stop grace period."""
    if ingress is None:
        return ["no ingress service (workflow-canceller ingress)"]
    problems = []
    if ingress.get("entrypoint") != ["workflow-canceller", "ingress"]:
        problems.append("ingress: entrypoint must be workflow-canceller ingress")
    env = ingress.get("environment", {})
    port = str(env.get("CANCELLER_INGRESS_PORT", "8081"))
    if port not in {p.split(":")[-1] for p in ingress.get("ports", [])}:
        problems.append(f"ingress: CANCELLER_INGRESS_PORT {port} is not published")
    publish_timeout_s = float(env.get("CANCELLER_PUBLISH_TIMEOUT_S", "10"))
    if _seconds(ingress.get("stop_grace_period", "10s")) <= publish_timeout_s:
        problems.append("ingress: stop_grace_period must be longer than CANCELLER_PUBLISH_TIMEOUT_S")
    return problems


def main() -> int:
    """Run the command line; return the exit status."""
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    problems = check(compose)
    for problem in problems:
        print(problem, file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
