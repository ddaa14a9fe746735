"""Render deploy/base/prometheusrule.yaml from the Prometheus rule file, or check they agree.

The rule file deploy/prometheus/rules/workflow-canceller.rules.yml is the single source: docker
compose's Prometheus loads it, promtool unit-tests it, and this script wraps its groups in a
PrometheusRule for Kubernetes.

    python3 deploy/tools/render_prometheusrule.py           # rewrite the PrometheusRule
    python3 deploy/tools/render_prometheusrule.py --check   # exit 1 if it is out of date
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "deploy/prometheus/rules/workflow-canceller.rules.yml"
TARGET = ROOT / "deploy/base/prometheusrule.yaml"

HEADER = """\
# GENERATED from deploy/prometheus/rules/workflow-canceller.rules.yml by
# deploy/tools/render_prometheusrule.py: edit the rule file, then rerun the script.
# scripts/validate-deploy.sh fails when this file and the rule file disagree.
"""


class _Dumper(yaml.SafeDumper):
    """Safe dumper that writes multi-line strings (PromQL) as literal blocks."""


def _str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _str)


def render() -> str:
    """Return the PrometheusRule manifest for the current rule file."""
    rules: dict[str, Any] = yaml.safe_load(RULES.read_text())
    manifest = {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PrometheusRule",
        "metadata": {
            "name": "workflow-canceller",
            "labels": {"app.kubernetes.io/name": "workflow-canceller"},
        },
        "spec": {"groups": rules["groups"]},
    }
    body = yaml.dump(manifest, Dumper=_Dumper, sort_keys=False, width=10_000, allow_unicode=True)
    return HEADER + body


def main() -> int:
    """Run the command line; return the exit status."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail if the file is out of date")
    args = parser.parse_args()
    wanted = render()
    if args.check:
        current = yaml.safe_load(TARGET.read_text()) if TARGET.exists() else None
        if current != yaml.safe_load(wanted):
            print(
                f"{TARGET.relative_to(ROOT)} is out of date with {RULES.relative_to(ROOT)};"
                " run: python3 deploy/tools/render_prometheusrule.py",
                file=sys.stderr,
            )
            return 1
        return 0
    TARGET.write_text(wanted)
    return 0


if __name__ == "__main__":
    sys.exit(main())
