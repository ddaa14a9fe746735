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

from service.config import ENV_PREFIX, IngressSettings, Settings
from service.ingress import IngressMetrics
from service.observe.metrics import Metrics

ROOT = Path(__file__).resolve().parents[1]
DASHBOARD = ROOT / "deploy/grafana/dashboard.json"
RULES = ROOT / "deploy/prometheus/rules/workflow-canceller.rules.yml"
RULE_TESTS = ROOT / "deploy/prometheus/rules/workflow-canceller.rules.test.yml"
SCALED_OBJECT = ROOT / "deploy/components/keda/scaledobject.yaml"
RUNBOOK = ROOT / "docs/runbook.md"
OVERLAYS = ("staging", "production")
WORKER = "workflow-canceller"
INGRESS = "workflow-canceller-ingress"
# The components each overlay includes (deploy/components/), in order.
COMPONENTS = {
    "staging": ("keda", "webhook-ingress", "broker-tls", "site"),
    "production": ("keda", "broker-tls", "site"),
}
INGRESS_OVERLAYS = tuple(o for o in OVERLAYS if "webhook-ingress" in COMPONENTS[o])
# (overlay, Deployment) for every Deployment an overlay renders.
DEPLOYMENTS = [(o, WORKER) for o in OVERLAYS] + [(o, INGRESS) for o in INGRESS_OVERLAYS]

# One API key allows 150 requests / 60 s and one replica can use all of it
# (deploy/components/keda/scaledobject.yaml).
MAX_REPLICAS = 3
# The scope the rule file is written for (the docker compose stack); each overlay's PrometheusRule
# is rendered with the overlay's namespace and its site.yaml's vhost and runbook base.
DEFAULT_VHOST = "/"
DEFAULT_NAMESPACE = "workflow-canceller"
DEFAULT_RUNBOOK_BASE = "https://git.example.com/crm/workflow-canceller/blob/main/docs/runbook.md"
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


def _one(docs: tuple[dict[str, Any], ...], kind: str, name: str | None = None) -> dict[str, Any]:
    """The single object of this kind (and name, where the worker and the ingress both have one)."""
    found = [doc for doc in docs if doc["kind"] == kind and name in (None, doc["metadata"]["name"])]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


def _pod(docs: tuple[dict[str, Any], ...], name: str) -> dict[str, Any]:
    """The pod spec of the Deployment `name`."""
    return dict(_one(docs, "Deployment", name)["spec"]["template"]["spec"])


def _config(docs: tuple[dict[str, Any], ...], pod: dict[str, Any]) -> dict[str, str]:
    """The data of the ConfigMap the pod's first container takes its environment from."""
    name = pod["containers"][0]["envFrom"][0]["configMapRef"]["name"]
    config = next(d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"] == name)
    return dict(config["data"])


def _exported_metric_names() -> set[str]:
    """Every series name the service's metrics produce, suffixes included."""
    registry = CollectorRegistry()
    Metrics.build(registry)
    IngressMetrics.build(registry)
    suffixes = {
        "counter": ("_total", "_created"),
        "histogram": ("_bucket", "_sum", "_count", "_created"),
        "gauge": ("",),
        "summary": ("", "_sum", "_count", "_created"),
        "info": ("_info",),
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
    # A collapsed row keeps its panels inside it.
    panels = [p for top in dashboard["panels"] for p in (top, *top.get("panels", []))]
    for panel in panels:
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
                    problems.append(f"{where}: {name} is not exported by service.observe.metrics")
            elif not name.startswith("rabbitmq_") and name not in PROMETHEUS_BUILTINS:
                problems.append(f"{where}: {name} is neither canceller_*, rabbitmq_* nor Prometheus'")
    assert not problems, "\n".join(problems)
    # The check saw real queries of both kinds.
    assert {"canceller_ready", "canceller_event_age_seconds_bucket"} <= used
    assert {"canceller_ingress_requests_total", "canceller_ingress_publish_duration_seconds_bucket"} <= used
    assert "rabbitmq_detailed_queue_messages_unacked" in used


def test_exported_names_include_suffixes() -> None:
    """The exported-name set counts histogram and counter suffixes, not bare family names."""
    exported = _exported_metric_names()
    assert "canceller_dialnexa_request_duration_seconds_bucket" in exported
    assert "canceller_events_processed_total" in exported
    assert "canceller_dialnexa_request_duration_seconds" not in exported


# ------------------------------------------------------------------------------------------------
# one site per query: vhost and namespace

_SELECTOR = re.compile(
    r'"(?:\\.|[^"\\])*"|\'(?:\\.|[^\'\\])*\''  # a string: skipped
    r'|(?<![\w:])([a-zA-Z_:][a-zA-Z0-9_:]*)\s*(\{(?:"(?:\\.|[^"\\])*"|[^}"])*\})?(?!\s*\()'
)
_MATCHER = re.compile(r'([a-zA-Z_]\w*)\s*(=~|!=|!~|=)\s*"((?:\\.|[^"\\])*)"')


def selectors(expr: str) -> list[tuple[str, set[tuple[str, str, str]]]]:
    """(metric name, its label matchers) for each rabbitmq_*, canceller_* and up selector."""
    found = []
    for match in _SELECTOR.finditer(expr):
        name, braces = match.group(1), match.group(2)
        if name and (name.startswith(("rabbitmq_", "canceller_")) or name == "up"):
            found.append((name, set(_MATCHER.findall(braces or ""))))
    return found


def unscoped(expr: str, vhost: tuple[str, str], namespace: tuple[str, str]) -> list[str]:
    """The selectors of expr that lack the vhost matcher (rabbitmq_*) or the namespace matcher
    (canceller_*, up); each matcher given as (operator, value)."""
    missing = []
    for name, matchers in selectors(expr):
        label, wanted = ("vhost", vhost) if name.startswith("rabbitmq_") else ("namespace", namespace)
        if (label, *wanted) not in matchers:
            missing.append(f"{name} has no {label}{wanted[0]}{wanted[1]!r}")
    return missing


@pytest.mark.parametrize(
    ("expr", "problems"),
    [
        ('sum(rabbitmq_a{vhost="/",queue=~"q"}) + canceller_b{namespace="ns"}', 0),
        ('max by (queue) (rabbitmq_a{queue="q"})', 1),
        ('rate(canceller_b[5m]) / rate(canceller_c{x="vhost"}[5m])', 2),
        ('rabbitmq_a{vhost="other"} or up{job="j"} or up{namespace="ns"}', 2),
        ('absent(rabbitmq_a{vhost="/",queue=~"rabbitmq_b{}"})', 0),
    ],
)
def test_the_scope_check_finds_unscoped_selectors(expr: str, problems: int) -> None:
    """The check below counts every selector without its vhost or namespace matcher, and only those."""
    assert len(unscoped(expr, ("=", "/"), ("=", "ns"))) == problems


def test_every_query_selects_one_vhost_and_namespace() -> None:
    """Every rabbitmq_* selector in the rules, the KEDA query and the dashboard matches a vhost, and
    every canceller_* and up selector a namespace: two sites never see each other's series."""
    problems = []
    seen: dict[str, int] = {}
    for where, expr in _query_sources():
        if where.startswith("dashboard"):
            vhost, namespace = ("=", "$vhost"), ("=~", "$namespace")
        elif where == "KEDA trigger":
            vhost, namespace = ("=", "site.yaml:rabbitmq-vhost"), ("=", "")
        else:
            vhost, namespace = ("=", DEFAULT_VHOST), ("=", DEFAULT_NAMESPACE)
        kind = where.split()[0]
        seen[kind] = seen.get(kind, 0) + len(selectors(expr))
        problems += [f"{where}: {problem}" for problem in unscoped(expr, vhost, namespace)]
    assert not problems, "\n".join(problems)
    # The check saw the selectors of all three: the dashboard's, the rules' and the KEDA query's.
    assert seen["dashboard"] >= 40 and seen["rule"] >= 20 and seen["KEDA"] == 2, seen


def test_dashboard_picks_one_site() -> None:
    """The dashboard has single-valued namespace and vhost variables: no "All" that adds sites up."""
    variables = {v["name"]: v for v in json.loads(DASHBOARD.read_text())["templating"]["list"]}
    for name, metric in (("namespace", "canceller_ready"), ("vhost", "rabbitmq_detailed_queue_messages")):
        variable = variables[name]
        assert variable["type"] == "query"
        assert variable["includeAll"] is False and variable["multi"] is False, name
        assert variable["query"]["query"].startswith(f"label_values({metric}"), name
        assert variable["query"]["query"].endswith(f", {name})"), name


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_built_overlay_watches_its_own_vhost_and_namespace(overlay: str) -> None:
    """The overlay's KEDA query and alert rules select its site.yaml vhost and its namespace; the
    broker alerts carry the namespace so that routing by namespace reaches the right team."""
    docs = _built(overlay)
    vhost = ("=", _site(overlay)["rabbitmq-vhost"])
    namespace = ("=", _one(docs, "Namespace")["metadata"]["name"])
    (trigger,) = _one(docs, "ScaledObject")["spec"]["triggers"]
    assert unscoped(trigger["metadata"]["query"], vhost, namespace) == []
    assert len(selectors(trigger["metadata"]["query"])) == 2
    rules = [r for g in _one(docs, "PrometheusRule")["spec"]["groups"] for r in g["rules"]]
    for rule in rules:
        assert unscoped(rule["expr"], vhost, namespace) == [], rule["alert"]
        if any(name.startswith("rabbitmq_") for name, _ in selectors(rule["expr"])):
            assert rule["labels"]["namespace"] == namespace[1], rule["alert"]


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
    assert {
        "WorkflowCancellerIngressNotReady",
        "WorkflowCancellerIngressRefusingEvents",
        "WorkflowCancellerIngressSignatureFailures",
    } <= alerts.keys()
    for name, rule in alerts.items():
        doc = RUNBOOK
        annotations = rule["annotations"]
        assert len(annotations["description"]) > 80, name
        assert annotations["runbook_url"] == f"{DEFAULT_RUNBOOK_BASE}#{name.lower()}", name
        assert "runbook" not in annotations, f"{name}: runbook_url replaces the relative runbook link"
        assert name.lower() in _headings(doc), f"{doc.name} has no '### {name}' section"
        assert rule["labels"]["severity"] in {"warning", "critical"}, name


def _expected_groups(overlay: str) -> list[str]:
    """The rule groups an overlay's PrometheusRule carries: the ingress's only with the ingress."""
    names = [group["name"] for group in yaml.safe_load(RULES.read_text())["groups"]]
    return [n for n in names if overlay in INGRESS_OVERLAYS or n != "workflow-canceller-ingress"]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_alert_links_its_runbook_section_by_absolute_url(overlay: str) -> None:
    """Each alert the overlay ships has runbook_url = the site's https runbook base + an anchor that
    is a section of docs/runbook.md."""
    base = _site(overlay)["runbook-base-url"]
    assert base.startswith("https://") and "#" not in base
    headings = _headings(RUNBOOK)
    rules = [r for g in _one(_built(overlay), "PrometheusRule")["spec"]["groups"] for r in g["rules"]]
    assert len(rules) >= 10
    for rule in rules:
        url = rule["annotations"]["runbook_url"]
        page, _, anchor = url.partition("#")
        assert page == base, rule["alert"]
        assert anchor == rule["alert"].lower()
        assert anchor in headings, f"docs/runbook.md has no section for {url}"


def _headings(doc: Path) -> set[str]:
    """The level-3 headings of a Markdown file, lower-cased (as the runbook anchors are)."""
    return {
        line.lstrip("#").strip().lower() for line in doc.read_text().splitlines() if line.startswith("### ")
    }


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
# components


def _kustomization(path: Path) -> dict[str, Any]:
    """The parsed kustomization.yaml of a directory."""
    return dict(yaml.safe_load((path / "kustomization.yaml").read_text()))


def test_overlays_include_the_components_the_tests_expect() -> None:
    """Each overlay lists exactly the components COMPONENTS says, and every component is used."""
    used: set[str] = set()
    for overlay in OVERLAYS:
        listed = _kustomization(ROOT / "deploy/overlays" / overlay).get("components", [])
        names = tuple(Path(entry).name for entry in listed)
        assert all(entry.startswith("../../components/") for entry in listed), listed
        assert names == COMPONENTS[overlay], overlay
        used |= set(names)
    components = {path.parent.name for path in (ROOT / "deploy/components").glob("*/kustomization.yaml")}
    assert {"keda", "webhook-ingress", "broker-tls", "site"} <= components
    assert all(COMPONENTS[overlay][-1] == "site" for overlay in OVERLAYS), "site applies last"
    assert components <= used, f"no overlay exercises {components - used}"
    for name in components:
        kustomization = _kustomization(ROOT / "deploy/components" / name)
        assert kustomization["kind"] == "Component", name
        assert kustomization["apiVersion"] == "kustomize.config.k8s.io/v1alpha1", name


def test_optional_parts_are_not_in_the_base() -> None:
    """The base holds no ScaledObject, no ingress object and no TLS mount: components add them."""
    base = _kustomization(ROOT / "deploy/base")
    listed = " ".join(base.get("resources", []))
    assert "scaledobject" not in listed
    assert "ingress" not in listed
    generated = {generator["name"] for generator in base.get("configMapGenerator", [])}
    assert generated == {"workflow-canceller-config"}
    assert "broker-tls" not in (ROOT / "deploy/base/deployment.yaml").read_text()


def test_production_renders_no_example_host() -> None:
    """Production has no Ingress (it does not include the webhook ingress); no example host is
    rendered except the two placeholders operators set: the image's registry and, in site.yaml,
    where they keep the runbook."""
    docs = _built("production")
    assert not [d for d in docs if d["kind"] == "Ingress"]
    assert not [d for d in docs if d["metadata"]["name"].startswith(INGRESS)]
    images = {
        c["image"]
        for d in docs
        if d["kind"] == "Deployment"
        for c in _pod(docs, d["metadata"]["name"])["containers"]
    }
    text = yaml.safe_dump_all(docs)
    for image in images:
        text = text.replace(image, "")
    text = text.replace(_site("production")["runbook-base-url"] + "#", "")
    assert not re.findall(r"[\w.-]*\.example\.(?:com|org|net)\b", text)


TLS_SETTINGS = {WORKER: Settings, INGRESS: IngressSettings}


@pytest.mark.parametrize(("overlay", "name"), [d for d in DEPLOYMENTS if "broker-tls" in COMPONENTS[d[0]]])
def test_broker_tls_files_come_from_a_secret_mounted_read_only(overlay: str, name: str) -> None:
    """With the broker-tls component, each pod mounts the Secret's CA, certificate and key read-only,
    and the service's own TLS settings point at those files."""
    pod = _pod(_built(overlay), name)
    (volume,) = [v for v in pod["volumes"] if v["name"] == "broker-tls"]
    secret = volume["secret"]
    assert secret["secretName"] == "workflow-canceller-broker-tls"
    assert secret["defaultMode"] == 0o440
    files = {item["path"] for item in secret["items"]}
    assert files == {"ca.crt", "tls.crt", "tls.key"}
    container = pod["containers"][0]
    (mount,) = [m for m in container["volumeMounts"] if m["name"] == "broker-tls"]
    assert mount["readOnly"] is True
    env = {item["name"]: item.get("value") for item in container["env"]}
    settings = {ENV_PREFIX + field.upper() for field in TLS_SETTINGS[name].model_fields}
    wanted = {f"{ENV_PREFIX}AMQP_CA_FILE": "ca.crt", f"{ENV_PREFIX}AMQP_CERT_FILE": "tls.crt"}
    wanted[f"{ENV_PREFIX}AMQP_KEY_FILE"] = "tls.key"
    for variable, file in wanted.items():
        assert variable in settings, f"{variable} is not a setting of {TLS_SETTINGS[name].__name__}"
        assert env[variable] == f"{mount['mountPath']}/{file}"


# ------------------------------------------------------------------------------------------------
# site values


def _site(overlay: str) -> dict[str, str]:
    """The site values of an overlay (deploy/overlays/OVERLAY/site.yaml)."""
    site = yaml.safe_load((ROOT / "deploy/overlays" / overlay / "site.yaml").read_text())
    assert site["metadata"]["name"] == "workflow-canceller-site"
    assert site["metadata"]["annotations"]["config.kubernetes.io/local-config"] == "true"
    return dict(site["data"])


def _image_tag(overlay: str) -> str:
    """The tag the overlay sets on the workflow-canceller image."""
    (image,) = [
        i for i in _kustomization(ROOT / "deploy/overlays" / overlay)["images"] if i["name"] == WORKER
    ]
    return str(image["newTag"])


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_object_carries_version_part_of_and_managed_by(overlay: str) -> None:
    """Every rendered object is labelled with the overlay's release (its image tag), the site's
    part-of and managed-by; site.yaml itself is build input and is not rendered."""
    docs = _built(overlay)
    assert len(docs) >= 10
    for doc in docs:
        labels = doc["metadata"].get("labels", {})
        where = f"{doc['kind']} {doc['metadata']['name']}"
        assert labels.get("app.kubernetes.io/version") == _image_tag(overlay), where
        assert labels.get("app.kubernetes.io/part-of") == _site(overlay)["part-of"], where
        assert labels.get("app.kubernetes.io/managed-by") == "kustomize", where
    assert not [d for d in docs if d["metadata"]["name"] == "workflow-canceller-site"]
    # Metadata only: a release must not change a selector.
    for doc in docs:
        selector = doc.get("spec", {}).get("selector", {})
        assert "app.kubernetes.io/version" not in json.dumps(selector), doc["metadata"]["name"]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_site_values_reach_the_objects(overlay: str) -> None:
    """Prometheus address and namespace, broker namespace, ingress host, class and controller
    namespace come from site.yaml; no "site.yaml:KEY" placeholder is left."""
    docs = _built(overlay)
    site = _site(overlay)
    assert "site.yaml:" not in yaml.safe_dump_all(docs)
    (trigger,) = _one(docs, "ScaledObject")["spec"]["triggers"]
    assert trigger["metadata"]["serverAddress"] == site["prometheus-url"]
    policies = [d for d in docs if d["kind"] == "NetworkPolicy"]
    assert len(policies) == (2 if overlay in INGRESS_OVERLAYS else 1)
    for policy in policies:
        spec = policy["spec"]
        broker = [r for r in spec["egress"] if {p["port"] for p in r["ports"]} == {5671, 5672}]
        assert [peer["namespaceSelector"]["matchLabels"] for r in broker for peer in r["to"]] == [
            {"kubernetes.io/metadata.name": site["broker-namespace"]}
        ]
        allowed_in = {
            peer["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"]
            for rule in spec["ingress"]
            for peer in rule["from"]
        }
        if policy["metadata"]["name"] == INGRESS:
            assert allowed_in == {site["prometheus-namespace"], site["ingress-controller-namespace"]}
        else:
            assert allowed_in == {site["prometheus-namespace"]}
    if overlay in INGRESS_OVERLAYS:
        spec = _one(docs, "Ingress", INGRESS)["spec"]
        assert spec["ingressClassName"] == site["ingress-class"]
        hosts = [rule["host"] for rule in spec["rules"]] + [h for tls in spec["tls"] for h in tls["hosts"]]
        assert hosts == [site["ingress-host"]] * 2


# ------------------------------------------------------------------------------------------------
# the built overlays


PORTS = {WORKER: ("http-metrics", 8080), INGRESS: ("http", 8081)}


@pytest.mark.parametrize(("overlay", "name"), DEPLOYMENTS)
def test_probes_use_healthz_and_readyz(overlay: str, name: str) -> None:
    """Liveness and startup probe /healthz, readiness probes /readyz, on each Deployment's one port."""
    port, number = PORTS[name]
    container = _pod(_built(overlay), name)["containers"][0]
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["startupProbe"]["httpGet"]["path"] == "/healthz"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    ports = {port["name"]: port["containerPort"] for port in container["ports"]}
    for probe in ("livenessProbe", "startupProbe", "readinessProbe"):
        assert container[probe]["httpGet"]["port"] == port
    assert ports == {port: number}


@pytest.mark.parametrize(("overlay", "name"), DEPLOYMENTS)
def test_pod_is_locked_down(overlay: str, name: str) -> None:
    """Non-root, read-only root filesystem, no privilege escalation, no capabilities, RuntimeDefault."""
    pod = _pod(_built(overlay), name)
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
    pod = _pod(docs, WORKER)
    drain_s = float(_config(docs, pod).get("CANCELLER_DRAIN_TIMEOUT_S", "20"))
    assert pod["terminationGracePeriodSeconds"] > drain_s + 10


@pytest.mark.parametrize("overlay", INGRESS_OVERLAYS)
def test_ingress_grace_period_outlasts_prestop_and_publish_timeout(overlay: str) -> None:
    """The ingress pod gets its preStop pause plus a whole publish timeout before SIGKILL."""
    docs = _built(overlay)
    pod = _pod(docs, INGRESS)
    publish_timeout_s = float(_config(docs, pod).get("CANCELLER_PUBLISH_TIMEOUT_S", "10"))
    pause_s = pod["containers"][0]["lifecycle"]["preStop"]["sleep"]["seconds"]
    assert pod["terminationGracePeriodSeconds"] > pause_s + publish_timeout_s


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_keda_scales_on_ready_plus_unacked_within_the_rate_limit(overlay: str) -> None:
    """The ScaledObject targets the worker Deployment, counts unacked messages and stops at 3 replicas."""
    docs = _built(overlay)
    scaled = _one(docs, "ScaledObject")["spec"]
    assert scaled["scaleTargetRef"]["name"] == _one(docs, "Deployment", WORKER)["metadata"]["name"]
    assert 1 <= scaled["minReplicaCount"] <= scaled["maxReplicaCount"] <= MAX_REPLICAS
    (trigger,) = scaled["triggers"]
    query = trigger["metadata"]["query"]
    assert "rabbitmq_detailed_queue_messages_ready" in query
    assert "rabbitmq_detailed_queue_messages_unacked" in query
    assert "workflow-canceller\\\\.(campaign-ended|complaint-received)" in query


SECRET_ENV = {
    WORKER: ("workflow-canceller-secrets", {"CANCELLER_AMQP_URL", "CANCELLER_DIALNEXA_API_KEY"}),
    INGRESS: ("workflow-canceller-ingress-secrets", {"CANCELLER_AMQP_URL", "CANCELLER_WEBHOOK_SECRETS"}),
}


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_no_secret_values_in_the_manifests(overlay: str) -> None:
    """No Secret is shipped; broker URLs, the API key and the webhook secrets come from secretKeyRefs."""
    docs = _built(overlay)
    assert not [d for d in docs if d["kind"] == "Secret"]
    for deployment, (secret, names) in SECRET_ENV.items():
        if deployment == INGRESS and overlay not in INGRESS_OVERLAYS:
            continue
        env = {item["name"]: item for item in _pod(docs, deployment)["containers"][0]["env"]}
        for name in names:
            assert "value" not in env[name]
            assert env[name]["valueFrom"]["secretKeyRef"]["name"] == secret
        for config in (d for d in docs if d["kind"] == "ConfigMap"):
            assert not names & config["data"].keys()
    text = yaml.safe_dump_all(docs)
    assert not re.search(r"\w+://[^/\s:@]+:[^/\s@]+@", text), "a URL with a password"
    assert "sim_secret" not in text
    assert "whsec_" not in text


POLICY_PORTS = {
    WORKER: ({("UDP", 53), ("TCP", 53), ("TCP", 5672), ("TCP", 5671), ("TCP", 443)}, {("TCP", 8080)}),
    INGRESS: ({("UDP", 53), ("TCP", 53), ("TCP", 5672), ("TCP", 5671)}, {("TCP", 8081)}),
}


@pytest.mark.parametrize(("overlay", "name"), DEPLOYMENTS)
def test_network_policy_allows_only_dns_broker_and_https(overlay: str, name: str) -> None:
    """Worker egress: DNS, AMQP(S), HTTPS; ingress egress: DNS and AMQP(S); each in on its one port."""
    egress, ingress = POLICY_PORTS[name]
    policy = _one(_built(overlay), "NetworkPolicy", name)["spec"]
    assert policy["podSelector"]["matchLabels"] == {"app.kubernetes.io/name": name}
    assert set(policy["policyTypes"]) == {"Ingress", "Egress"}
    egress_ports = {(p["protocol"], p["port"]) for rule in policy["egress"] for p in rule["ports"]}
    assert egress_ports == egress
    ingress_ports = {(p["protocol"], p["port"]) for rule in policy["ingress"] for p in rule["ports"]}
    assert ingress_ports == ingress


@pytest.mark.parametrize("overlay", INGRESS_OVERLAYS)
def test_worker_and_ingress_selectors_never_overlap(overlay: str) -> None:
    """Nothing that selects the worker's pods selects the ingress's, and the other way round."""
    docs = _built(overlay)
    labels = {
        name: _one(docs, "Deployment", name)["spec"]["template"]["metadata"]["labels"]
        for name in (WORKER, INGRESS)
    }
    for doc in docs:
        spec = doc.get("spec", {})
        selector = spec.get("selector") or spec.get("podSelector")
        if (
            doc["kind"] not in {"Deployment", "Service", "PodDisruptionBudget", "NetworkPolicy"}
            or not selector
        ):
            continue
        wanted = selector.get("matchLabels", selector)
        matched = [name for name, pod in labels.items() if wanted.items() <= pod.items()]
        assert matched == [doc["metadata"]["name"].removesuffix("-metrics")], doc["metadata"]["name"]


@pytest.mark.parametrize("overlay", INGRESS_OVERLAYS)
def test_ingress_runs_the_ingress_command_and_exposes_only_the_events_path(overlay: str) -> None:
    """The ingress pod runs `workflow-canceller ingress` on the configured port; the Ingress routes
    exactly POST /v1/events to it (probes and metrics stay inside the cluster)."""
    docs = _built(overlay)
    pod = _pod(docs, INGRESS)
    container = pod["containers"][0]
    assert container["command"] == ["workflow-canceller", "ingress"]
    port = container["ports"][0]
    assert _config(docs, pod)["CANCELLER_INGRESS_PORT"] == str(port["containerPort"])
    service = _one(docs, "Service", INGRESS)["spec"]
    (service_port,) = service["ports"]
    assert service_port["targetPort"] == port["name"]
    (rule,) = _one(docs, "Ingress", INGRESS)["spec"]["rules"]
    (path,) = rule["http"]["paths"]
    assert (path["path"], path["pathType"]) == ("/v1/events", "Exact")
    assert path["backend"]["service"] == {"name": INGRESS, "port": {"name": service_port["name"]}}
    tls_hosts = [h for tls in _one(docs, "Ingress", INGRESS)["spec"]["tls"] for h in tls["hosts"]]
    assert tls_hosts == [rule["host"]]


MONITORED_SERVICES = {WORKER: "workflow-canceller-metrics", INGRESS: INGRESS}


@pytest.mark.parametrize(("overlay", "monitor_name"), DEPLOYMENTS)
def test_metrics_are_scraped_and_rules_shipped(overlay: str, monitor_name: str) -> None:
    """Each ServiceMonitor scrapes its Service's port; the PrometheusRule is the rule file."""
    service_name = MONITORED_SERVICES[monitor_name]
    docs = _built(overlay)
    service = _one(docs, "Service", service_name)
    monitor = _one(docs, "ServiceMonitor", monitor_name)["spec"]
    assert monitor["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    others = [d for d in docs if d["kind"] == "Service" and d is not service]
    assert not any(
        monitor["selector"]["matchLabels"].items() <= d["metadata"]["labels"].items() for d in others
    )
    assert monitor["endpoints"][0]["port"] in {p["name"] for p in service["spec"]["ports"]}
    if monitor_name == WORKER:
        assert service["spec"]["publishNotReadyAddresses"] is True
    groups = _one(docs, "PrometheusRule")["spec"]["groups"]
    assert [g["name"] for g in groups] == _expected_groups(overlay)
    source = {r["alert"]: r for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"]}
    namespace = _one(docs, "Namespace")["metadata"]["name"]
    vhost = _site(overlay)["rabbitmq-vhost"]
    for rule in (r for g in groups for r in g["rules"]):
        original = source[rule["alert"]]
        expr = original["expr"].replace(f'vhost="{DEFAULT_VHOST}"', f'vhost="{vhost}"')
        assert rule["expr"] == expr.replace(f'namespace="{DEFAULT_NAMESPACE}"', f'namespace="{namespace}"')
        assert rule["for"] == original["for"]
        assert rule["annotations"]["description"] == original["annotations"]["description"]
    namespaces = {d["metadata"].get("namespace") for d in docs if d["kind"] != "Namespace"}
    assert namespaces == {_one(docs, "Namespace")["metadata"]["name"]}
