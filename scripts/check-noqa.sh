#!/usr/bin/env bash
# Every suppressed security finding says why: `# noqa: S105  # reason`. Part of `make lint`.
set -euo pipefail
cd "$(dirname "$0")/.."
unexplained=$(grep -rnE --include='*.py' '#[[:space:]]*noqa:[[:space:]]*[A-Z0-9, ]*\bS[0-9]+[A-Z0-9, ]*$' \
  service scripts tests testkit bench drills deploy/tools 2>/dev/null || true)
if [[ -n $unexplained ]]; then
  echo "lint: a 'noqa: S...' without a reason comment after it:" >&2
  echo "$unexplained" >&2
  exit 1
fi
