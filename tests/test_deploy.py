"""Deployment and observability artefacts: validators, metric names, key properties of the overlays.

The validators themselves (hadolint, the compose specification, promtool, kubectl kustomize,
kubernetes-validate, the CRD schemas, the dashboard checks) run through scripts/validate-deploy.sh,
which installs what it needs. The other tests read the artefacts directly and pin the properties
that matter to operators.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import CollectorRegistry

from service.metrics import Metrics

ROOT = Path(__file__).resolve().parents[1]
DASHBOARD = ROOT / "deploy/grafana/dashboard.json"
RULES = ROOT / "deploy/prometheus/rules/workflow-canceller.rules.yml"
RULE_TESTS = ROOT / "deploy/prometheus/rules/workflow-canceller.rules.test.yml"
SCALED_OBJECT = ROOT / "deploy/base/scaledobject.yaml"
DEPLOY_DOC = ROOT / "docs/deploy.md"
OVERLAYS = ("staging", "production")

# One API key allows 150 requests / 60 s and one replica can use all of it (deploy/base/scaledobject.yaml).
MAX_REPLICAS = 3
# Metric names used in queries that neither the worker nor RabbitMQ exports: Prometheus' own.
PROMETHEUS_BUILTINS = {"up"}


# ------------------------------------------------------------------------------------------------
# helpers


def _root_or_has(*tools: str) -> None:
    """Skip unless every tool is on PATH or the validation script can install it (root + apt)."""
    missing = [tool for tool in tools if shutil.which(tool) is None]
    can_install = os.geteuid() == 0 and shutil.which("apt-get") is not None
    if missing and not can_install:
        pytest.skip(f"not installed and not installable without root: {', '.join(missing)}")


@cache
def _built(overlay: str) -> tuple[dict[str, Any], ...]:
    """The objects of one overlay, as `kubectl kustomize` builds them."""
    if shutil.which("kubectl") is None:
        pytest.skip("kubectl is not installed (scripts/validate-deploy.sh says how to get it)")
    result = subprocess.run(
        ["kubectl", "kustomize", str(ROOT / "deploy/overlays" / overlay)],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    return tuple(doc for doc in yaml.safe_load_all(result.stdout) if doc)


def _one(docs: tuple[dict[str, Any], ...], kind: str) -> dict[str, Any]:
    """The single object of this kind."""
    found = [doc for doc in docs if doc["kind"] == kind]
    assert len(found) == 1, f"expected one {kind}, found {len(found)}"
    return found[0]


def _exported_metric_names() -> set[str]:
    """Every series name the service's metrics produce, suffixes included."""
    registry = CollectorRegistry()
    Metrics.build(registry)
    suffixes = {
        "counter": ("_total", "_created"),
        "histogram": ("_bucket", "_sum", "_count", "_created"),
        "gauge": ("",),
        "summary": ("", "_sum", "_count", "_created"),
    }
    return {family.name + suffix for family in registry.collect() for suffix in suffixes[family.type]}


_FUNCTION_CALL = r"(?![a-zA-Z0-9_:])(?!\s*\()"
_KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "offset"}
_KEYWORDS |= {"and", "or", "unless", "atan2", "inf", "nan"}


def promql_metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects (not functions, labels, keywords or strings)."""
    expr = re.sub(r'"(?:\\.|[^"\\])*"|\'(?:\\.|[^\'\\])*\'|`[^`]*`', '""', expr)
    expr = re.sub(r"\$\{?\w+\}?", "", expr)
    expr = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", expr)
    expr = re.sub(r"\{[^}]*\}", " ", expr)
    expr = re.sub(r"\[[^\]]*\]", " ", expr)
    names = re.findall(r"(?<![\w.])([a-zA-Z_:][a-zA-Z0-9_:]*)" + _FUNCTION_CALL, expr)
    return {name for name in names if name.lower() not in _KEYWORDS}


def _query_sources() -> Iterator[tuple[str, str]]:
    """(where, PromQL) for every query of the dashboard, the alert rules and the KEDA trigger."""
    dashboard = json.loads(DASHBOARD.read_text())
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            yield f"dashboard panel {panel['title']!r}", target["expr"]
    for group in yaml.safe_load(RULES.read_text())["groups"]:
        for rule in group["rules"]:
            yield f"rule {rule.get('alert') or rule.get('record')}", rule["expr"]
    for trigger in yaml.safe_load(SCALED_OBJECT.read_text())["spec"]["triggers"]:
        if trigger["type"] == "prometheus":
            yield "KEDA trigger", trigger["metadata"]["query"]


def _alerts() -> list[dict[str, Any]]:
    """Every alerting rule in the rule file."""
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return [rule for group in groups for rule in group["rules"] if "alert" in rule]


# ------------------------------------------------------------------------------------------------
# the validators


@pytest.mark.timeout(600)
def test_validate_deploy_script_passes() -> None:
    """Every validator in scripts/validate-deploy.sh accepts every deployment artefact."""
    _root_or_has("promtool", "kubectl", "node", "npm")
    result = subprocess.run(
        ["bash", str(ROOT / "scripts/validate-deploy.sh")],
        capture_output=True,
        text=True,
        timeout=590,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "FAIL" not in result.stdout


# ------------------------------------------------------------------------------------------------
# metric names


@pytest.mark.parametrize(
    ("expr", "names"),
    [
        ('sum by (le) (rate(a_bucket{x=~"b|c"}[5m]))', {"a_bucket"}),
        ("histogram_quantile(0.99, x) > 5 and on () y offset 5m", {"x", "y"}),
        ('absent(z{queue=~"q\\\\..+"}) or vector(1)', {"z"}),
        ('sum(rate(a[$__rate_interval])) / sum(b{n=~"$namespace"}) > 1e3', {"a", "b"}),
    ],
)
def test_promql_metric_names_skips_functions_labels_and_strings(expr: str, names: set[str]) -> None:
    """The name extractor returns selected metrics only, not functions, labels, keywords or numbers."""
    assert promql_metric_names(expr) == names


def test_every_metric_in_dashboard_rules_and_keda_is_exported() -> None:
    """Each canceller_* name in a query is one the service exports; others come from RabbitMQ."""
    exported = _exported_metric_names()
    problems = []
    used: set[str] = set()
    for where, expr in _query_sources():
        for name in promql_metric_names(expr):
            used.add(name)
            if name.startswith("canceller_"):
                if name not in exported:
                    problems.append(f"{where}: {name} is not exported by service.metrics")
            elif not name.startswith("rabbitmq_") and name not in PROMETHEUS_BUILTINS:
                problems.append(f"{where}: {name} is neither canceller_*, rabbitmq_* nor Prometheus'")
    assert not problems, "\n".join(problems)
    # The check saw real queries of both kinds.
    assert {"canceller_ready", "canceller_event_age_seconds_bucket"} <= used
    assert "rabbitmq_detailed_queue_messages_unacked" in used


def test_exported_names_include_suffixes() -> None:
    """The exported-name set counts histogram and counter suffixes, not bare family names."""
    exported = _exported_metric_names()
    assert "canceller_dialnexa_request_duration_seconds_bucket" in exported
    assert "canceller_events_processed_total" in exported
    assert "canceller_dialnexa_request_duration_seconds" not in exported


# ------------------------------------------------------------------------------------------------
# alert rules


def test_alerts_cover_the_issue_and_say_what_to_do() -> None:
    """The alerts the issue lists exist, each with a description and a runbook section in the docs."""
    alerts = {rule["alert"]: rule for rule in _alerts()}
    required = {
        "WorkflowCancellerDLQGrowing",
        "WorkflowCancellerNotReady",
        "WorkflowCancellerNotConsuming",
        "WorkflowCancellerComplaintAgeHigh",
        "WorkflowCancellerDialNexaErrorRatioHigh",
        "WorkflowCancellerDialNexaCredentialsFailing",
        "WorkflowCancellerBacklogAgeHigh",
    }
    assert required <= alerts.keys()
    headings = {
        line.lstrip("#").strip().lower()
        for line in DEPLOY_DOC.read_text().splitlines()
        if line.startswith("### ")
    }
    for name, rule in alerts.items():
        annotations = rule["annotations"]
        assert len(annotations["description"]) > 80, name
        assert annotations["runbook"] == f"docs/deploy.md#{name.lower()}", name
        assert name.lower() in headings, f"docs/deploy.md has no '### {name}' section"
        assert rule["labels"]["severity"] in {"warning", "critical"}, name


def test_every_alert_has_a_firing_and_a_quiet_unit_test() -> None:
    """promtool tests show each alert firing in one case and staying quiet in another."""
    firing: set[str] = set()
    quiet: set[str] = set()
    for case in yaml.safe_load(RULE_TESTS.read_text())["tests"]:
        for alert_test in case.get("alert_rule_test", []):
            (firing if alert_test.get("exp_alerts") else quiet).add(alert_test["alertname"])
    names = {rule["alert"] for rule in _alerts()}
    assert names <= firing, f"never shown firing: {names - firing}"
    assert names <= quiet, f"never shown quiet: {names - quiet}"


# ------------------------------------------------------------------------------------------------
# the built overlays


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_probes_use_healthz_and_readyz(overlay: str) -> None:
    """Liveness and startup probe /healthz, readiness probes /readyz, all on the metrics port."""
    container = _one(_built(overlay), "Deployment")["spec"]["template"]["spec"]["containers"][0]
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["startupProbe"]["httpGet"]["path"] == "/healthz"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    ports = {port["name"]: port["containerPort"] for port in container["ports"]}
    for probe in ("livenessProbe", "startupProbe", "readinessProbe"):
        assert container[probe]["httpGet"]["port"] == "http-metrics"
    assert ports == {"http-metrics": 8080}


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_pod_is_locked_down(overlay: str) -> None:
    """Non-root, read-only root filesystem, no privilege escalation, no capabilities, RuntimeDefault."""
    pod = _one(_built(overlay), "Deployment")["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert pod["automountServiceAccountToken"] is False
    for container in pod["containers"]:
        context = container["securityContext"]
        assert context["runAsNonRoot"] is True
        assert context["readOnlyRootFilesystem"] is True
        assert context["allowPrivilegeEscalation"] is False
        assert context["capabilities"]["drop"] == ["ALL"]
        assert context["seccompProfile"] == {"type": "RuntimeDefault"}
        resources = container["resources"]
        assert {"cpu", "memory"} <= resources["requests"].keys()
        assert {"cpu", "memory"} <= resources["limits"].keys()


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_grace_period_outlasts_the_drain(overlay: str) -> None:
    """terminationGracePeriodSeconds is longer than the CANCELLER_DRAIN_TIMEOUT_S the pod gets."""
    docs = _built(overlay)
    pod = _one(docs, "Deployment")["spec"]["template"]["spec"]
    config_name = pod["containers"][0]["envFrom"][0]["configMapRef"]["name"]
    config = next(d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"] == config_name)
    drain_s = float(config["data"].get("CANCELLER_DRAIN_TIMEOUT_S", "20"))
    assert pod["terminationGracePeriodSeconds"] > drain_s + 10


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_keda_scales_on_ready_plus_unacked_within_the_rate_limit(overlay: str) -> None:
    """The ScaledObject targets the Deployment, counts unacked messages and stops at 3 replicas."""
    docs = _built(overlay)
    scaled = _one(docs, "ScaledObject")["spec"]
    assert scaled["scaleTargetRef"]["name"] == _one(docs, "Deployment")["metadata"]["name"]
    assert 1 <= scaled["minReplicaCount"] <= scaled["maxReplicaCount"] <= MAX_REPLICAS
    (trigger,) = scaled["triggers"]
    query = trigger["metadata"]["query"]
    assert "rabbitmq_detailed_queue_messages_ready" in query
    assert "rabbitmq_detailed_queue_messages_unacked" in query
    assert "workflow-canceller\\\\.(campaign-ended|complaint-received)" in query


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_no_secret_values_in_the_manifests(overlay: str) -> None:
    """No Secret is shipped; the broker URL and API key come only from a secretKeyRef."""
    docs = _built(overlay)
    assert not [d for d in docs if d["kind"] == "Secret"]
    container = _one(docs, "Deployment")["spec"]["template"]["spec"]["containers"][0]
    env = {item["name"]: item for item in container["env"]}
    for name in ("CANCELLER_AMQP_URL", "CANCELLER_DIALNEXA_API_KEY"):
        assert "value" not in env[name]
        assert env[name]["valueFrom"]["secretKeyRef"]["name"] == "workflow-canceller-secrets"
    for config in (d for d in docs if d["kind"] == "ConfigMap"):
        assert not {"CANCELLER_AMQP_URL", "CANCELLER_DIALNEXA_API_KEY"} & config["data"].keys()
    text = yaml.safe_dump_all(docs)
    assert not re.search(r"\w+://[^/\s:@]+:[^/\s@]+@", text), "a URL with a password"
    assert "sim_secret" not in text


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_network_policy_allows_only_dns_broker_and_https(overlay: str) -> None:
    """Egress is limited to DNS, AMQP(S) and HTTPS; ingress only to the metrics port."""
    policy = _one(_built(overlay), "NetworkPolicy")["spec"]
    assert set(policy["policyTypes"]) == {"Ingress", "Egress"}
    egress_ports = {(p["protocol"], p["port"]) for rule in policy["egress"] for p in rule["ports"]}
    assert egress_ports == {("UDP", 53), ("TCP", 53), ("TCP", 5672), ("TCP", 5671), ("TCP", 443)}
    ingress_ports = {(p["protocol"], p["port"]) for rule in policy["ingress"] for p in rule["ports"]}
    assert ingress_ports == {("TCP", 8080)}


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_metrics_are_scraped_and_rules_shipped(overlay: str) -> None:
    """The ServiceMonitor scrapes the Service's metrics port; the PrometheusRule is the rule file."""
    docs = _built(overlay)
    service = _one(docs, "Service")
    monitor = _one(docs, "ServiceMonitor")["spec"]
    assert monitor["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    assert monitor["endpoints"][0]["port"] in {p["name"] for p in service["spec"]["ports"]}
    assert service["spec"]["publishNotReadyAddresses"] is True
    rule = _one(docs, "PrometheusRule")
    assert rule["spec"]["groups"] == yaml.safe_load(RULES.read_text())["groups"]
    namespaces = {d["metadata"].get("namespace") for d in docs if d["kind"] != "Namespace"}
    assert namespaces == {_one(docs, "Namespace")["metadata"]["name"]}
