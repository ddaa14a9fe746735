#!/usr/bin/env bash
# Make sure a RabbitMQ broker answers for the tests and `make run`.
# With CANCELLER_TEST_AMQP_URL set, that broker is used as it is. Otherwise the local one on
# 127.0.0.1:5672 is started if it is installed but down.
set -euo pipefail

if [[ -n "${CANCELLER_TEST_AMQP_URL:-}" ]]; then
  echo "broker: using CANCELLER_TEST_AMQP_URL"
  exit 0
fi
if (exec 3<>/dev/tcp/127.0.0.1/5672) 2>/dev/null; then
  echo "broker: RabbitMQ answers on 127.0.0.1:5672"
  exit 0
fi
if command -v rabbitmq-server >/dev/null; then
  echo "broker: starting the local RabbitMQ (rabbitmq-server -detached)"
  rabbitmq-server -detached
  timeout 120 rabbitmqctl await_startup
  exit 0
fi
echo "broker: no RabbitMQ on 127.0.0.1:5672 and none installed; the tests fall back to testcontainers when Docker runs" >&2
