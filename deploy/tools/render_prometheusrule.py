"""Render each overlay's PrometheusRule from the Prometheus rule file, or check they agree.

The rule file deploy/prometheus/rules/workflow-canceller.rules.yml is the single source: docker
compose's Prometheus loads it, promtool unit-tests it, and this script writes its groups as a
PrometheusRule into every overlay that has a site.yaml (deploy/overlays/NAME/prometheusrule.yaml),
scoped to that site:

- `vhost="/"` in the expressions becomes the site.yaml's rabbitmq-vhost;
- `namespace="workflow-canceller"` in the expressions, and as an alert label, becomes the
  overlay's namespace (kustomization.yaml);
- each runbook_url keeps its anchor and gets the site.yaml's runbook-base-url;
- the webhook ingress's group is kept only when the overlay includes the webhook-ingress component.

    python3 deploy/tools/render_prometheusrule.py           # rewrite every overlay's PrometheusRule
    python3 deploy/tools/render_prometheusrule.py --check   # exit 1 if any is out of date
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "deploy/prometheus/rules/workflow-canceller.rules.yml"
OVERLAYS = ROOT / "deploy/overlays"
TARGET_NAME = "prometheusrule.yaml"

# The scope the rule file is written for: the docker compose stack's.
DEFAULT_VHOST = "/"
DEFAULT_NAMESPACE = "workflow-canceller"
INGRESS_GROUP = "workflow-canceller-ingress"
INGRESS_COMPONENT = "webhook-ingress"

HEADER = """\
# GENERATED from deploy/prometheus/rules/workflow-canceller.rules.yml and this overlay's site.yaml
# and namespace by deploy/tools/render_prometheusrule.py: edit those, then rerun the script.
# scripts/validate-deploy.sh fails when this file is out of date.
"""


class _Dumper(yaml.SafeDumper):
    """Safe dumper that writes multi-line strings (PromQL) as literal blocks."""


def _str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _str)


def _matcher(label: str, value: str) -> str:
    """An equality matcher with the value quoted as a PromQL string."""
    return f"{label}={json.dumps(value)}"


def overlays() -> list[Path]:
    """Every overlay directory with a site.yaml, sorted."""
    return sorted(path.parent for path in OVERLAYS.glob("*/site.yaml"))


def site_groups(overlay: Path) -> list[dict[str, Any]]:
    """The rule file's groups, scoped to the overlay's vhost and namespace, with its runbook base."""
    site = yaml.safe_load((overlay / "site.yaml").read_text())["data"]
    kustomization = yaml.safe_load((overlay / "kustomization.yaml").read_text())
    namespace = kustomization["namespace"]
    vhost = site["rabbitmq-vhost"]
    base = site["runbook-base-url"]
    if not base.startswith("https://") or "#" in base:
        raise ValueError(f"{overlay.name}/site.yaml: runbook-base-url must be an https:// URL without #")
    components = {Path(entry).name for entry in kustomization.get("components", [])}
    groups: list[dict[str, Any]] = yaml.safe_load(RULES.read_text())["groups"]
    kept = []
    for group in groups:
        if group["name"] == INGRESS_GROUP and INGRESS_COMPONENT not in components:
            continue
        for rule in group["rules"]:
            expr = rule["expr"].replace(_matcher("vhost", DEFAULT_VHOST), _matcher("vhost", vhost))
            expr = expr.replace(_matcher("namespace", DEFAULT_NAMESPACE), _matcher("namespace", namespace))
            rule["expr"] = expr
            labels = rule.get("labels", {})
            if labels.get("namespace") == DEFAULT_NAMESPACE:
                labels["namespace"] = namespace
            annotations = rule.get("annotations", {})
            if "runbook_url" in annotations:
                _, _, anchor = annotations["runbook_url"].partition("#")
                annotations["runbook_url"] = f"{base}#{anchor}"
        kept.append(group)
    return kept


def render(overlay: Path) -> str:
    """Return the PrometheusRule manifest for one overlay."""
    manifest = {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PrometheusRule",
        "metadata": {
            "name": "workflow-canceller",
            "labels": {"app.kubernetes.io/name": "workflow-canceller"},
        },
        "spec": {"groups": site_groups(overlay)},
    }
    body = yaml.dump(manifest, Dumper=_Dumper, sort_keys=False, width=10_000, allow_unicode=True)
    return HEADER + body


def main() -> int:
    """Run the command line; return the exit status."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail if a file is out of date")
    args = parser.parse_args()
    stale = []
    for overlay in overlays():
        target = overlay / TARGET_NAME
        wanted = render(overlay)
        if not args.check:
            target.write_text(wanted)
        elif not target.exists() or yaml.safe_load(target.read_text()) != yaml.safe_load(wanted):
            stale.append(str(target.relative_to(ROOT)))
    if stale:
        print(
            f"out of date with {RULES.relative_to(ROOT)} and site.yaml: {', '.join(stale)};"
            " run: python3 deploy/tools/render_prometheusrule.py",
            file=sys.stderr,
        )
        return 1
    if not overlays():
        print(f"no overlay with a site.yaml under {OVERLAYS.relative_to(ROOT)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
