#!/usr/bin/env bash
# `make run`: the worker against the local RabbitMQ. When neither CANCELLER_DIALNEXA_BASE_URL nor
# CANCELLER_DIALNEXA_API_KEY is configured (environment or .env), the bundled DialNexa simulator is
# started on localhost and the worker is pointed at it. The worker itself never falls back to it.
set -euo pipefail
VENV=${VENV:-.venv}
SIM_PORT=${SIM_PORT:-8089}

configured() {
  [[ -n "${!1:-}" ]] || grep -qs "^$1=" .env
}

# No broker configured and none on this machine: say how to get one instead of reconnecting forever.
if ! configured CANCELLER_AMQP_URL && ! (exec 3<>/dev/tcp/127.0.0.1/5672) 2>/dev/null; then
  cat >&2 <<'NOBROKER'
make run: no RabbitMQ answers on 127.0.0.1:5672, and none could be started here.
  Start the compose stack's broker:   docker compose up -d rabbitmq
  or install one:                     apt-get install rabbitmq-server  (make run starts it)
  or point at another:                CANCELLER_AMQP_URL=amqp://user:pass@host:5672/ make run
NOBROKER
  exit 1
fi

if ! configured CANCELLER_DIALNEXA_BASE_URL && ! configured CANCELLER_DIALNEXA_API_KEY; then
  "$VENV/bin/dialnexa-simulator" --host 127.0.0.1 --port "$SIM_PORT" &
  sim_pid=$!
  trap 'kill $sim_pid 2>/dev/null || true' EXIT
  for _ in $(seq 1 100); do
    curl -fsS "http://127.0.0.1:$SIM_PORT/healthz" >/dev/null 2>&1 && break
    sleep 0.1
  done
  export CANCELLER_DIALNEXA_BASE_URL="http://127.0.0.1:$SIM_PORT/v1"
  export CANCELLER_DIALNEXA_API_KEY="sim_key:sim_secret"
  # Outputs are published `mandatory`: give them somewhere to go on a local broker.
  "$VENV/bin/python" scripts/sample.py bind >&2
  cat >&2 <<BANNER

  ############################################################################
  ##  NO DIALNEXA API CONFIGURED: using the bundled DialNexa SIMULATOR at    ##
  ##  $CANCELLER_DIALNEXA_BASE_URL (nothing real is cancelled).       ##
  ##  Set CANCELLER_DIALNEXA_BASE_URL and CANCELLER_DIALNEXA_API_KEY to use  ##
  ##  the real API.                                                          ##
  ############################################################################

BANNER
fi
export CANCELLER_LOG_FORMAT=${CANCELLER_LOG_FORMAT:-console}
"$VENV/bin/workflow-canceller" run
