#!/usr/bin/env bash
# Known vulnerabilities in the locked dependencies (`make audit`, docs/security.md).
#
# What this finds depends on what the package index serves today (new releases, vulnerability
# data), so it is its own target and not part of `make test`'s verdict.
#
# 1. uv exports every locked package (all groups) to a pinned requirements file.
# 2. pip-audit checks each pin against the index's vulnerability data, ignoring only the ids
#    written down with a reason in security/audit-exceptions.txt.
# 3. Where the per-release JSON is not served (some mirrors and proxies answer only the
#    per-project JSON), a pin skipped by pip-audit is checked against the per-project JSON of the
#    index pip is configured with, whose `vulnerabilities` list describes the latest release:
#    authoritative only when the pin IS the latest release.
#
# Exit status: 0 every package checked, none vulnerable; 1 a known vulnerability; 3 none found,
# but some packages could not be checked (each listed as UNCHECKED). Nothing passes silently.
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=${VENV:-.venv}
UV=${UV:-.tools/bin/uv}
EXCEPTIONS=security/audit-exceptions.txt
started=$(date +%s)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# --- exceptions: `ID  # reason`, nothing else ------------------------------------------------
ignore_args=()
while IFS= read -r line || [[ -n $line ]]; do
  [[ $line =~ ^[[:space:]]*(#|$) ]] && continue
  if [[ ! $line =~ ^[[:space:]]*([A-Za-z0-9._:-]+)[[:space:]]+#[[:space:]]*[^[:space:]].* ]]; then
    echo "audit: $EXCEPTIONS: every exception needs a reason after '#': $line" >&2
    exit 1
  fi
  ignore_args+=(--ignore-vuln "${BASH_REMATCH[1]}")
done <"$EXCEPTIONS"

# --- the locked dependencies, pinned -----------------------------------------------------------
# AUDIT_REQUIREMENTS=FILE audits a given pinned requirements file instead (to try the checks).
if [[ -n ${AUDIT_REQUIREMENTS:-} ]]; then
  cp "$AUDIT_REQUIREMENTS" "$work/requirements.txt"
else
  "$UV" export --frozen --all-groups --no-hashes --no-emit-project --quiet -o "$work/requirements.txt"
fi
pins=$(grep -cE '^[A-Za-z0-9]' "$work/requirements.txt")
echo "audit: $pins pinned packages, $((${#ignore_args[@]} / 2)) exception(s) in $EXCEPTIONS"

# --- pip-audit ---------------------------------------------------------------------------------
set +e
"$VENV/bin/pip-audit" -r "$work/requirements.txt" --no-deps --disable-pip \
  --vulnerability-service pypi --progress-spinner off --timeout 60 \
  --format json --output "$work/report.json" "${ignore_args[@]}" >"$work/stdout" 2>"$work/stderr"
status=$?
set -e
if [[ ! -s $work/report.json ]]; then
  tail -n 3 "$work/stderr" | sed 's/^/audit: pip-audit: /' >&2
  echo "audit: FAILED: pip-audit produced no report (exit $status); is the package index reachable?" >&2
  exit 1
fi
# pip-audit's own words (without its advice to hash pins: uv.lock holds the hashes).
grep -hv -e 'encouraged to fully hash' -e 'pip-compile' "$work/stdout" "$work/stderr" | sed 's/^/audit: pip-audit: /' || true

# --- judge the report; fall back to per-project JSON for what pip-audit skipped -----------------
# The JSON API of the index pip is configured with (PIP_INDEX_URL, pip.conf, else pip's default).
json_api=$("$VENV/bin/python" "$(dirname "$0")/index_json_api.py")
echo "audit: per-project JSON from the configured index"
"$VENV/bin/python" - "$work/report.json" "$EXCEPTIONS" "$json_api" <<'PY'
"""Fail on any reported vulnerability and on any package that could not be checked."""

import json
import re
import sys
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

report_path, exceptions_path, json_api = sys.argv[1:4]
report = json.load(open(report_path))
ignored = {
    line.split("#", 1)[0].strip()
    for line in open(exceptions_path)
    if line.strip() and not line.lstrip().startswith("#")
}
found: list[str] = []
skipped: list[tuple[str, str]] = []
for dep in report["dependencies"]:
    for vuln in dep.get("vulns", []):
        fixes = ", ".join(vuln.get("fix_versions") or []) or "none yet"
        found.append(f"{dep['name']}=={dep['version']}: {vuln['id']} (fixed in: {fixes})")
    if "skip_reason" in dep:
        match = re.search(r"\(([^()]+)\)$", dep["skip_reason"])
        skipped.append((dep["name"], match.group(1) if match else "?"))

checked_by_pip_audit = len(report["dependencies"]) - len(skipped)
print(f"audit: pip-audit checked {checked_by_pip_audit} package(s), skipped {len(skipped)}")


def project_json(pin: tuple[str, str]) -> tuple[str, str, str | None, list[dict[str, object]], str]:
    name, version = pin
    url = f"{json_api}/{name}/json"
    try:
        with urllib.request.urlopen(url, timeout=60) as answer:  # noqa: S310  # the configured index
            data = json.load(answer)
    except urllib.error.HTTPError as error:
        return name, version, None, [], f"the index answered {error.code} for {url}"
    except (urllib.error.URLError, TimeoutError, ValueError) as error:
        return name, version, None, [], f"the index could not be reached: {type(error).__name__}: {error}"
    return name, version, data["info"]["version"], data.get("vulnerabilities") or [], ""


unchecked: list[str] = []
if skipped:
    print("audit: the per-release JSON was not served for those; reading the per-project JSON")
    with ThreadPoolExecutor(8) as pool:
        for name, version, latest, vulns, error in pool.map(project_json, skipped):
            if latest is None:
                unchecked.append(f"{name}=={version}: {error}")
            elif latest != version:
                unchecked.append(
                    f"{name}=={version}: not the latest release ({latest}); its vulnerability"
                    " data is not served by this index (upgrade the pin, or run the audit where"
                    " the per-release JSON is served)"
                )
            else:
                for vuln in vulns:
                    ids = {str(vuln.get("id")), *map(str, vuln.get("aliases") or [])}
                    if ids & ignored:
                        continue
                    fixes = ", ".join(map(str, vuln.get("fixed_in") or [])) or "none yet"
                    found.append(f"{name}=={version}: {vuln.get('id')} (fixed in: {fixes})")

for line in found:
    print(f"audit: VULNERABLE {line}", file=sys.stderr)
for line in unchecked:
    print(f"audit: UNCHECKED {line}", file=sys.stderr)
if found:
    print(
        f"audit: FAILED: {len(found)} known vulnerability(ies). Upgrade (uv lock --upgrade-package"
        " NAME) or record an exception with a reason in security/audit-exceptions.txt.",
        file=sys.stderr,
    )
if unchecked:
    print(f"audit: INCOMPLETE: {len(unchecked)} package(s) could not be checked.", file=sys.stderr)
if found:
    sys.exit(1)
if unchecked:
    sys.exit(3)
print(f"audit: no known vulnerabilities in the {len(report['dependencies'])} packages of this platform")
PY
echo "audit: done in $(($(date +%s) - started)) s"
