"""Check the Grafana dashboard and its provisioning files; export their PromQL for promtool.

    python3 deploy/tools/check_dashboard.py [--promql-out FILE]

Checks that deploy/grafana/dashboard.json parses and has the structure Grafana provisioning needs
(uid, title, schemaVersion, the data source variable, panels with unique ids and a valid grid
position, no overlapping panels, every query panel with targets that use the ${datasource}
variable), that it has the rows and the metrics issue 4 asks for, that the "Pacing and limiter" row
has queries for each pacing view (limiter wait, in-flight requests and terminal cache hits by lane,
the pace, the request rate and its 429 share, rate-limit remaining), and that the provisioning
files parse and point where docker-compose.yml mounts things.

With --promql-out, writes every dashboard query and the KEDA trigger query (Grafana variables
replaced by fixed values) as recording rules to FILE, so that `promtool check rules FILE` proves
they parse. Exit status 1 with one line per problem.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "deploy/grafana/dashboard.json"
PROVISIONING = ROOT / "deploy/grafana/provisioning"
SCALED_OBJECT = ROOT / "deploy/components/keda/scaledobject.yaml"

DATASOURCE = "${datasource}"
REQUIRED_ROWS = (
    "Overview",
    "Events",
    "Cancellations",
    "DialNexa",
    "Retries and dead letters",
    "Work in progress and queues",
    "Readiness and broker connection",
    "Pacing and limiter",
)
# What the issue asks the dashboard to show, as the metric each view needs.
REQUIRED_METRICS = {
    "events by result": "canceller_events_processed_total",
    "cancellations by outcome": "canceller_workflow_cancellations_total",
    "DialNexa latency": "canceller_dialnexa_request_duration_seconds_bucket",
    "DialNexa status codes": "canceller_dialnexa_requests_total",
    "retries": "canceller_dialnexa_retries_total",
    "DLQ growth": "rabbitmq_detailed_queue_messages",
    "in-flight work": "canceller_inflight_events",
    "event age at completion by type": "canceller_event_age_seconds_bucket",
    "readiness": "canceller_ready",
    "broker reconnects": "canceller_broker_reconnects_total",
}
PACING_ROW = "Pacing and limiter"
# What the pacing row shows, as a pattern one of the row's queries must match.
_BY_LANE = r"\bby \([^)]*\blane\b[^)]*\).*"
PACING_VIEWS = {
    "limiter wait by lane": _BY_LANE + r"\bcanceller_limiter_wait_seconds_bucket\b",
    "pace": r"\bcanceller_dialnexa_pace_rps\b",
    "actual request rate": r"\bcanceller_dialnexa_requests_total\b",
    "share answered 429": r'\bcanceller_dialnexa_requests_total\{[^}]*status_code="429"',
    "rate-limit remaining": r"\bcanceller_dialnexa_rate_limit_remaining\b",
    "in-flight requests by lane": _BY_LANE + r"\bcanceller_inflight_requests\b",
    "terminal cache hits by lane": _BY_LANE + r"\bcanceller_terminal_cache_hits_total\b",
}
# Grafana's variables, replaced by fixed values so that promtool can parse the queries.
GRAFANA_VARIABLES = {
    "$__rate_interval": "5m",
    "$__interval": "1m",
    "$__range": "1h",
    "$namespace": "workflow-canceller",
    "$vhost": "/",
}


def _panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    """Every panel, with the panels of collapsed rows flattened in after their row."""
    out: list[dict[str, Any]] = []
    for panel in dashboard.get("panels", []):
        out.append(panel)
        out.extend(panel.get("panels", []) if panel.get("type") == "row" else [])
    return out


def check_dashboard(dashboard: dict[str, Any]) -> list[str]:
    """Return one message per structural problem of the dashboard."""
    problems: list[str] = []
    for key in ("uid", "title"):
        if not isinstance(dashboard.get(key), str) or not dashboard[key]:
            problems.append(f"dashboard has no {key}")
    if not isinstance(dashboard.get("schemaVersion"), int):
        problems.append("dashboard has no integer schemaVersion")
    variables = {v.get("name"): v for v in dashboard.get("templating", {}).get("list", [])}
    ds_var = variables.get("datasource", {})
    if ds_var.get("type") != "datasource" or ds_var.get("query") != "prometheus":
        problems.append("no template variable 'datasource' of type datasource (prometheus)")

    panels = _panels(dashboard)
    if not panels:
        problems.append("dashboard has no panels")
    ids = [p.get("id") for p in panels]
    if len(ids) != len(set(ids)) or any(not isinstance(i, int) for i in ids):
        problems.append("panel ids are missing or not unique")
    rows: list[str] = []
    current_row = ""
    row_exprs: dict[str, list[str]] = {}
    for panel in panels:
        title = panel.get("title", "")
        where = f"panel {panel.get('id')} ({title!r})"
        grid = panel.get("gridPos", {})
        if not all(isinstance(grid.get(k), int) for k in ("h", "w", "x", "y")):
            problems.append(f"{where}: gridPos needs integer h, w, x, y")
        elif grid["x"] + grid["w"] > 24:
            problems.append(f"{where}: wider than the 24-column grid")
        kind = panel.get("type")
        if kind == "row":
            rows.append(title)
            current_row = title
            continue
        if not title:
            problems.append(f"{where}: no title")
        if kind == "text":
            if not panel.get("options", {}).get("content"):
                problems.append(f"{where}: text panel without content")
            continue
        if panel.get("datasource", {}).get("uid") != DATASOURCE:
            problems.append(f"{where}: data source is not {DATASOURCE}")
        targets = panel.get("targets", [])
        if not targets:
            problems.append(f"{where}: no targets")
        for target in targets:
            if not target.get("expr", "").strip() or not target.get("refId"):
                problems.append(f"{where}: a target without expr or refId")
            if target.get("datasource", {}).get("uid") != DATASOURCE:
                problems.append(f"{where}: a target's data source is not {DATASOURCE}")
            row_exprs.setdefault(current_row, []).append(target.get("expr", ""))
    boxes = [(p.get("id"), p.get("gridPos", {})) for p in panels]
    for index, (id_a, a) in enumerate(boxes):
        for id_b, b in boxes[index + 1 :]:
            if all(isinstance(g.get(k), int) for g in (a, b) for k in ("h", "w", "x", "y")) and (
                a["x"] < b["x"] + b["w"]
                and b["x"] < a["x"] + a["w"]
                and a["y"] < b["y"] + b["h"]
                and b["y"] < a["y"] + a["h"]
            ):
                problems.append(f"panels {id_a} and {id_b} overlap")
    for row in REQUIRED_ROWS:
        if row not in rows:
            problems.append(f"missing row {row!r}")
    for view, pattern in PACING_VIEWS.items():
        if not any(re.search(pattern, expr) for expr in row_exprs.get(PACING_ROW, [])):
            problems.append(f"row {PACING_ROW!r} has no panel for {view}")
    exprs = " ".join(expressions(dashboard))
    for view, metric in REQUIRED_METRICS.items():
        if not re.search(rf"\b{re.escape(metric)}\b", exprs):
            problems.append(f"no panel shows {view} ({metric})")
    return problems


def check_provisioning() -> list[str]:
    """Return one message per problem of the Grafana provisioning files for docker compose."""
    problems: list[str] = []
    datasources = yaml.safe_load((PROVISIONING / "datasources/prometheus.yml").read_text())
    sources = datasources.get("datasources", []) if isinstance(datasources, dict) else []
    if datasources.get("apiVersion") != 1 or not any(
        s.get("type") == "prometheus" and s.get("url") == "http://prometheus:9090" for s in sources
    ):
        problems.append("datasources/prometheus.yml: no apiVersion 1 Prometheus at prometheus:9090")
    dashboards = yaml.safe_load((PROVISIONING / "dashboards/workflow-canceller.yml").read_text())
    providers = dashboards.get("providers", []) if isinstance(dashboards, dict) else []
    if dashboards.get("apiVersion") != 1 or not any(
        p.get("type") == "file" and p.get("options", {}).get("path") == "/var/lib/grafana/dashboards"
        for p in providers
    ):
        problems.append("dashboards/workflow-canceller.yml: no file provider for /var/lib/grafana/dashboards")
    return problems


def expressions(dashboard: dict[str, Any]) -> list[str]:
    """Every PromQL expression in the dashboard's targets."""
    return [t["expr"] for p in _panels(dashboard) for t in p.get("targets", []) if t.get("expr")]


def keda_queries() -> list[str]:
    """The PromQL of every prometheus trigger in the KEDA component's ScaledObject."""
    scaled = yaml.safe_load(SCALED_OBJECT.read_text())
    return [t["metadata"]["query"] for t in scaled["spec"]["triggers"] if t.get("type") == "prometheus"]


def promql_rules(exprs: list[str]) -> str:
    """A rule file with one recording rule per expression, Grafana variables substituted."""
    rules = []
    for index, expr in enumerate(exprs):
        for variable, value in GRAFANA_VARIABLES.items():
            expr = expr.replace(variable, value)
        if "$" in re.sub(r"\{\{[^}]*\}\}", "", expr):
            raise ValueError(f"unknown Grafana variable in: {expr}")
        rules.append({"record": f"dashboard:query_{index}", "expr": expr})
    return yaml.safe_dump({"groups": [{"name": "dashboard-and-keda-queries", "rules": rules}]})


def main() -> int:
    """Run the command line; return the exit status."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--promql-out", type=Path, help="write the queries as a rule file")
    args = parser.parse_args()
    try:
        dashboard = json.loads(DASHBOARD.read_text())
    except (OSError, json.JSONDecodeError) as error:
        print(f"{DASHBOARD.relative_to(ROOT)}: {error}", file=sys.stderr)
        return 1
    problems = check_dashboard(dashboard) + check_provisioning()
    for problem in problems:
        print(problem, file=sys.stderr)
    if problems:
        return 1
    if args.promql_out:
        exprs = expressions(dashboard) + keda_queries()
        args.promql_out.write_text(promql_rules(exprs))
    return 0


if __name__ == "__main__":
    sys.exit(main())
