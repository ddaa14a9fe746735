#!/usr/bin/env bash
# Validate docs/asyncapi.yaml: up to date with the models, and valid against the AsyncAPI 3.0.0
# JSON schema from npm's @asyncapi/specs (pinned in docs/tools/asyncapi, installed into a cache).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
VENV=${VENV:-$ROOT/.venv}
CACHE=${DOCS_TOOLS_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/workflow-canceller/docs-tools}
die() { echo "FAIL $*" >&2; exit 1; }

PYTHONPATH=$ROOT "$VENV/bin/python" "$ROOT/scripts/asyncapi.py" --check || die "docs/asyncapi.yaml drifted from the models"
echo "ok   docs/asyncapi.yaml matches the models"

command -v npm >/dev/null 2>&1 || {
    echo "setup npm missing: installing Debian packages nodejs npm"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nodejs npm >/dev/null || die "npm is needed (apt-get install npm)"
}
src=$ROOT/docs/tools/asyncapi
dir=$CACHE/asyncapi
if ! cmp -s "$src/package-lock.json" "$dir/package-lock.json" 2>/dev/null || [ ! -d "$dir/node_modules" ]; then
    echo "setup installing @asyncapi/specs (npm ci) into $dir"
    rm -rf "$dir" && mkdir -p "$dir" && cp "$src/package.json" "$src/package-lock.json" "$dir/"
    (cd "$dir" && npm ci --no-audit --no-fund --loglevel=error >/dev/null) || { rm -rf "$dir"; die "npm ci failed"; }
fi
schema="$dir/node_modules/@asyncapi/specs/schemas/3.0.0-without-\$id.json"
"$VENV/bin/check-jsonschema" --schemafile "$schema" "$ROOT/docs/asyncapi.yaml" >/dev/null \
    || { "$VENV/bin/check-jsonschema" --schemafile "$schema" "$ROOT/docs/asyncapi.yaml" || true; die "docs/asyncapi.yaml is not valid AsyncAPI 3.0.0"; }
echo "ok   docs/asyncapi.yaml is valid AsyncAPI 3.0.0 (@asyncapi/specs)"
