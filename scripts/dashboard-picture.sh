#!/usr/bin/env bash
# `make dashboard-picture`: docs/dashboard.png and docs/dashboard-data.json from a real run.
#
# Needs, and sets up when missing (as root, with apt-get): the Prometheus server (Debian package
# prometheus) and RabbitMQ's Prometheus endpoint (the rabbitmq_prometheus plugin, enabled on the
# local broker; it serves port 15692). Then deploy/tools/dashboard_run.py starts the simulator, a
# worker, the ingress and a Prometheus, sends about 2.5 minutes of load, queries every panel and
# draws the picture. About 4 minutes in all. Extra arguments go to dashboard_run.py.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
VENV=${VENV:-$ROOT/.venv}

if ! command -v prometheus >/dev/null 2>&1; then
    echo "setup: the Prometheus server is missing: installing Debian package prometheus"
    if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null 2>&1; then
        echo "dashboard-picture: install the Debian package 'prometheus' (apt-get install prometheus)" >&2
        exit 1
    fi
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends prometheus >/dev/null
fi

if ! (exec 3<>/dev/tcp/127.0.0.1/15692) 2>/dev/null; then
    if [[ -n "${CANCELLER_TEST_AMQP_URL:-}" ]] || ! command -v rabbitmq-plugins >/dev/null 2>&1; then
        echo "dashboard-picture: nothing answers on 127.0.0.1:15692; enable the rabbitmq_prometheus plugin on the broker" >&2
        exit 1
    fi
    echo "setup: enabling RabbitMQ's rabbitmq_prometheus plugin (port 15692)"
    rabbitmq-plugins enable rabbitmq_prometheus >/dev/null
fi

exec "$VENV/bin/python" deploy/tools/dashboard_run.py "$@"
