#!/usr/bin/env bash
# Known vulnerabilities in the locked dependencies fail the build (filled in by the security work).
set -euo pipefail
